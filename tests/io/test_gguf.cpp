// GGUF reader: round trips of files built by the test-side writer, a table of bad files (each one
// mil::Error with a telling message), typed metadata access, the Llama loader (shapes, Q/K row
// un-permutation, tied/untied) and, when the teacher file is present, a comparison with golden
// values from the `gguf` package (scripts/make_gguf_golden.py).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>

#include <mil/nn/llama_gguf.hpp>

#include "gguf_writer.hpp"
#include "mini_json.hpp"

using namespace mil;
using mil::io::GgmlType;
using mil::io::GgufFile;
using mil::io::GgufType;
using mil::test::Bytes;
using mil::test::GgufWriter;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const mil::Error& e) {
    return e.what();
  }
  return "<no error>";
}
std::string parse_error(const Bytes& b) {
  return error_of([&] { GgufFile::from_bytes(b); });
}

// A file with every metadata type and three tensors of different types.
GgufWriter sample_writer() {
  GgufWriter w;
  w.str("general.architecture", "test")
      .scalar("a.u8", GgufType::u8, uint8_t(200))
      .scalar("a.i8", GgufType::i8, int8_t(-100))
      .scalar("a.u16", GgufType::u16, uint16_t(60000))
      .scalar("a.i16", GgufType::i16, int16_t(-30000))
      .u32("a.u32", 4000000000u)
      .scalar("a.i32", GgufType::i32, int32_t(-7))
      .f32("a.f32", 0.25f)
      .boolean("a.bool", true)
      .scalar("a.u64", GgufType::u64, uint64_t(1) << 40)
      .scalar("a.i64", GgufType::i64, int64_t(-5) << 40)
      .scalar("a.f64", GgufType::f64, 1e-300)
      .str_array("a.strings", {"hello", "", "wörld"})
      .num_array("a.ints", GgufType::i32, std::vector<int32_t>{3, -1, 4})
      .num_array("a.floats", GgufType::f32, std::vector<float>{1.5f, -2.f});
  // An array of arrays of strings: [["x", "yz"], []].
  Bytes nested;
  test::put_u32(nested, uint32_t(GgufType::array));
  test::put_u64(nested, 2);
  test::put_u32(nested, uint32_t(GgufType::string));
  test::put_u64(nested, 2);
  test::put_str(nested, "x");
  test::put_str(nested, "yz");
  test::put_u32(nested, uint32_t(GgufType::string));
  test::put_u64(nested, 0);
  w.raw("a.nested", uint32_t(GgufType::array), nested);

  w.f32_tensor("t.f32", {3, 2}, {1, 2, 3, 4, 5, 6});
  Bytes f16;
  for (float x : {0.5f, -1.f, 2.f, 65504.f}) test::put(f16, fp16(x).bits);
  w.tensor("t.f16", {4}, GgmlType::F16, f16);
  Bytes q8;  // one Q8_0 block: d = 0.5, quants -16..15
  test::put(q8, fp16(0.5f).bits);
  for (int j = 0; j < 32; ++j) q8.push_back(uint8_t(int8_t(j - 16)));
  w.tensor("t.q8", {32}, GgmlType::Q8_0, q8);
  return w;
}

void check_sample(const GgufFile& f) {
  CHECK(f.version() == 3);
  CHECK(f.alignment() == 32);
  CHECK(f.data_offset() % 32 == 0);
  CHECK(f.keys().size() == 16);
  CHECK(f.keys()[0] == "general.architecture");
  CHECK(f.get_string("general.architecture") == "test");
  CHECK(f.get_u32("a.u8") == 200);
  CHECK(f.get_i64("a.i8") == -100);
  CHECK(f.get_u32("a.u16") == 60000);
  CHECK(f.get_i64("a.i16") == -30000);
  CHECK(f.get_u32("a.u32") == 4000000000u);
  CHECK(f.get_i64("a.i32") == -7);
  CHECK(f.get_f32("a.f32") == 0.25f);
  CHECK(f.get_bool("a.bool"));
  CHECK(f.get_i64("a.u64") == (int64_t(1) << 40));
  CHECK(f.get_i64("a.i64") == -(int64_t(5) << 40));
  CHECK(f.get_f64("a.f64") == 1e-300);
  CHECK(f.get_string_array("a.strings") == std::vector<std::string_view>{"hello", "", "wörld"});
  CHECK(f.get_i64_array("a.ints") == std::vector<int64_t>{3, -1, 4});
  CHECK(f.get_f32_array("a.floats") == std::vector<float>{1.5f, -2.f});
  CHECK(f.array_size("a.strings") == 3);
  const auto& nested = f.value("a.nested");
  REQUIRE(nested.items.size() == 2);
  CHECK(nested.elem_type == GgufType::array);
  CHECK(nested.items[0].strings == std::vector<std::string_view>{"x", "yz"});
  CHECK(nested.items[1].strings.empty());

  REQUIRE(f.tensors().size() == 3);
  const auto* t = f.find_tensor("t.f32");
  REQUIRE(t);
  CHECK(t->shape == std::vector<int64_t>{3, 2});
  CHECK(t->type == GgmlType::F32);
  CHECK(t->n_bytes == 24);
  CHECK(t->rows() == 2);
  CHECK(io::dequantize(*t) == std::vector<float>{1, 2, 3, 4, 5, 6});
  CHECK(io::dequantize(f.tensor("t.f16")) == std::vector<float>{0.5f, -1.f, 2.f, 65504.f});
  auto q8 = io::dequantize(f.tensor("t.q8"));
  for (int j = 0; j < 32; ++j) CHECK(q8[j] == 0.5f * float(j - 16));
  CHECK(f.tensor("t.q8").offset % 32 == 0);
  CHECK(f.find_tensor("nope") == nullptr);
}

}  // namespace

TEST_CASE("gguf: round trip of every metadata type and three tensor types from memory") {
  check_sample(GgufFile::from_bytes(sample_writer().bytes()));
}

TEST_CASE("gguf: round trip through a memory-mapped file") {
  test::TempFile tmp(sample_writer().bytes());
  GgufFile f = GgufFile::open(tmp.path);
  check_sample(f);
  GgufFile moved = std::move(f);  // views into the mapping survive a move
  check_sample(moved);
}

TEST_CASE("gguf: version 2 and custom alignment and a file without tensors") {
  GgufWriter w = sample_writer();
  w.version = 2;
  w.alignment = 64;
  w.u32("general.alignment", 64);
  GgufFile f = GgufFile::from_bytes(w.bytes());
  CHECK(f.version() == 2);
  CHECK(f.alignment() == 64);
  CHECK(f.data_offset() % 64 == 0);
  CHECK(f.tensor("t.f16").offset == 64);
  CHECK(io::dequantize(f.tensor("t.f16"))[3] == 65504.f);

  GgufWriter empty;
  GgufFile e = GgufFile::from_bytes(empty.bytes());
  CHECK(e.tensors().empty());
  CHECK(e.keys().empty());
}

TEST_CASE("gguf: a missing file is a clear error") {
  std::string msg = error_of([] { GgufFile::open("/nonexistent/dir/model.gguf"); });
  CHECK(msg.find("cannot open '/nonexistent/dir/model.gguf'") != std::string::npos);
  msg = error_of([] { GgufFile::open("/tmp"); });
  CHECK(msg.find("not a regular file") != std::string::npos);
}

TEST_CASE("gguf: typed accessors reject wrong types and missing keys") {
  GgufFile f = GgufFile::from_bytes(sample_writer().bytes());
  auto has = [](const std::string& msg, const char* phrase) {
    INFO(msg);
    CHECK(msg.find(phrase) != std::string::npos);
  };
  has(error_of([&] { f.get_u32("general.architecture"); }), "has type string, expected uint32");
  has(error_of([&] { f.get_string("a.u32"); }), "has type uint32, expected string");
  has(error_of([&] { f.get_bool("a.u8"); }), "has type uint8, expected bool");
  has(error_of([&] { f.get_f32("a.i32"); }), "expected float32 or float64");
  has(error_of([&] { f.get_u32("a.i32"); }), "value -7 does not fit uint32");
  has(error_of([&] { f.get_u32("a.u64"); }), "does not fit uint32");
  has(error_of([&] { f.get_string_array("a.ints"); }), "has type array of int32, expected array of string");
  has(error_of([&] { f.get_i64_array("a.strings"); }), "expected array of integers");
  has(error_of([&] { f.get_f32_array("a.ints"); }), "expected array of float32");
  has(error_of([&] { f.array_size("a.f32"); }), "expected array");
  has(error_of([&] { f.get_u32("no.such.key"); }), "metadata key 'no.such.key' is missing");
  has(error_of([&] { f.tensor("no.such.tensor"); }), "tensor 'no.such.tensor' is missing");
  CHECK(!f.find_u32("no.such.key"));
  CHECK(f.find_u32("a.u32") == 4000000000u);
  CHECK(f.find_string("general.architecture") == "test");
  CHECK(f.find_bool("a.bool") == true);
  CHECK_THROWS_AS(f.find_u32("general.architecture"), mil::Error);
  CHECK(f.type_of("a.f64") == GgufType::f64);
}

TEST_CASE("gguf: every truncation of a valid file is an error naming the byte") {
  Bytes full = sample_writer().bytes();
  for (size_t n = 0; n < full.size(); ++n) {
    Bytes cut(full.begin(), full.begin() + n);
    std::string msg = parse_error(cut);
    INFO("cut at ", n, ": ", msg);
    bool ok = msg.find("truncated") != std::string::npos ||
              msg.find("beyond the end of the file") != std::string::npos ||
              msg.find("bytes left") != std::string::npos;
    CHECK(ok);
  }
  std::string msg = parse_error(Bytes(full.begin(), full.begin() + 250));
  INFO(msg);
  CHECK(msg.find("file truncated at byte ") != std::string::npos);
  CHECK(msg.find(" of metadata entry ") != std::string::npos);
  msg = parse_error(Bytes(full.begin(), full.begin() + 30));
  CHECK(msg.find("metadata count 16 is more than the 6 bytes left can hold") != std::string::npos);
  CHECK(msg.find("at byte 24") != std::string::npos);
  CHECK(msg.find("re-download") != std::string::npos);
}

namespace {

struct BadFile {
  const char* what;
  std::function<void(GgufWriter&)> edit;  // applied to a valid writer
  const char* phrase;
  std::function<void(Bytes&)> patch = nullptr;  // applied to the bytes afterwards
};

GgufWriter small_writer() {
  GgufWriter w;
  w.str("general.architecture", "llama");
  w.f32_tensor("a", {4}, {1, 2, 3, 4});
  w.f32_tensor("b", {8, 2}, std::vector<float>(16, 1.f));
  return w;
}

Bytes bytes_of_value(GgufType elem, uint64_t count) {
  Bytes b;
  test::put_u32(b, uint32_t(elem));
  test::put_u64(b, count);
  return b;
}

}  // namespace

TEST_CASE("gguf: table of bad files each gives one clear error") {
  using W = GgufWriter;
  constexpr uint64_t huge = uint64_t(1) << 30;
  std::vector<BadFile> cases = {
      {"bad magic", [](W&) {}, "bad magic", [](Bytes& b) { b[0] = 'X'; }},
      {"version 1", [](W& w) { w.version = 1; }, "unsupported GGUF version 1"},
      {"version 4", [](W& w) { w.version = 4; }, "unsupported GGUF version 4"},
      {"huge tensor count", [](W& w) { w.tensor_count = uint64_t(1) << 60; }, "tensor count"},
      {"huge metadata count", [](W& w) { w.kv_count = uint64_t(1) << 30; }, "metadata count"},
      {"count beyond int64", [](W& w) { w.kv_count = ~uint64_t(0); }, "impossibly large"},
      {"1 GiB string length",
       [&](W& w) { Bytes b; test::put_u64(b, huge); w.raw("k", uint32_t(GgufType::string), b); },
       "string value length 1073741824"},
      {"1 GiB key length", [](W&) {}, "key length",
       [](Bytes& b) { uint64_t n = uint64_t(1) << 30; std::memcpy(&b[24], &n, 8); }},
      {"huge array length",
       [](W& w) { w.raw("k", uint32_t(GgufType::array), bytes_of_value(GgufType::u32, uint64_t(1) << 40)); },
       "array length 1099511627776"},
      {"huge string array length",
       [](W& w) { w.raw("k", uint32_t(GgufType::array), bytes_of_value(GgufType::string, uint64_t(1) << 61)); },
       "array length"},
      {"unknown value type", [](W& w) { w.raw("k", 13, Bytes{0, 0, 0, 0}); }, "unknown metadata value type 13"},
      {"unknown array element type",
       [](W& w) { w.raw("k", uint32_t(GgufType::array), bytes_of_value(GgufType(77), 1)); },
       "unknown array element type 77"},
      {"deeply nested arrays",
       [](W& w) {
         Bytes b;
         for (int i = 0; i < 10; ++i) { test::put_u32(b, uint32_t(GgufType::array)); test::put_u64(b, 1); }
         test::put_u32(b, uint32_t(GgufType::u8));
         test::put_u64(b, 0);
         w.raw("k", uint32_t(GgufType::array), b);
       },
       "nested deeper"},
      {"bool of 2", [](W& w) { w.scalar("k", GgufType::boolean, uint8_t(2)); }, "bool value 2"},
      {"duplicate key", [](W& w) { w.u32("general.architecture", 1); }, "duplicate metadata key 'general.architecture'"},
      {"alignment 3", [](W& w) { w.u32("general.alignment", 3); }, "not a power of two"},
      {"alignment 0", [](W& w) { w.u32("general.alignment", 0); }, "not a power of two"},
      {"alignment of type string", [](W& w) { w.str("general.alignment", "32"); }, "general.alignment must be uint32"},
      {"n_dims 5", [](W& w) { w.tensors[0].dims = {1, 1, 1, 1, 4}; }, "n_dims 5 is not in 1..4"},
      {"n_dims 0", [](W& w) { w.tensors[0].dims = {}; }, "n_dims 0 is not in 1..4"},
      {"zero dim", [](W& w) { w.tensors[1].dims = {8, 0}; }, "dimension 1 is 0"},
      {"dim beyond int64", [](W& w) { w.tensors[1].dims = {8, ~uint64_t(0)}; }, "impossibly large"},
      {"overflowing dims",
       [](W& w) { w.tensors[1].dims = {uint64_t(1) << 32, uint64_t(1) << 32}; }, "element count overflows"},
      {"overflowing byte size",
       [](W& w) { w.tensors[1].dims = {uint64_t(1) << 31, uint64_t(1) << 31}; }, "byte size overflows"},
      {"unknown tensor type", [](W& w) { w.tensors[0].type = 99; }, "unknown ggml tensor type 99"},
      {"row not a whole block",
       [](W& w) { w.tensors[1].type = uint32_t(GgmlType::Q8_0); w.tensors[1].dims = {33}; },
       "not a multiple of the Q8_0 block size 32"},
      {"misaligned offset", [](W& w) { w.tensors[1].offset = 4; }, "data offset 4 is not a multiple of the alignment 32"},
      {"offset outside the file", [](W& w) { w.tensors[1].offset = uint64_t(1) << 40; }, "ends beyond the end of the file"},
      {"offset near int64 max",
       [](W& w) { w.tensors[1].offset = (uint64_t(INT64_MAX) / 32) * 32; }, "ends beyond the end of the file"},
      {"overlapping tensors", [](W& w) { w.tensors[1].offset = 0; }, "overlap in the data section"},
      {"duplicate tensor name", [](W& w) { w.tensors[1].name = w.tensors[0].name; }, "duplicate tensor name 'a'"},
      {"data smaller than the tensor", [](W&) {}, "ends beyond the end of the file",
       [](Bytes& b) { b.pop_back(); }},
      {"data section start beyond the file",
       [](W& w) { w.tensors[1].offset = 0; w.tensors[0].data.clear(); w.tensors[1].data.clear(); },
       "the data section should start at byte", [](Bytes& b) { b.pop_back(); }},
  };
  for (const auto& c : cases) {
    GgufWriter w = small_writer();
    c.edit(w);
    Bytes b = w.bytes();
    if (c.patch) c.patch(b);
    std::string msg = parse_error(b);
    INFO(c.what, ": ", msg);
    CHECK(msg.find(c.phrase) != std::string::npos);
  }
}

// ---- Llama loader -----------------------------------------------------------------------------

namespace {

struct TinyLlama {
  nn::LlamaConfig cfg;
  std::vector<std::vector<float>> hf_q, hf_k;  // per layer, HF row order [rows, d]
};

// HF-ordered values 1000*tensor + row + col/100 so every element is distinct and traceable.
std::vector<float> pattern(int tag, int64_t rows, int64_t cols) {
  std::vector<float> v(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) v[size_t(r * cols + c)] = float(1000 * tag + r) + float(c) / 100.f;
  return v;
}
// llama.cpp's converter order: GGUF row h*hd + 2i + j = HF row h*hd + j*hd/2 + i.
std::vector<float> permute_like_llama_cpp(const std::vector<float>& hf, int64_t heads, int64_t hd, int64_t cols) {
  std::vector<float> g(hf.size());
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t j = 0; j < 2; ++j)
        for (int64_t c = 0; c < cols; ++c)
          g[size_t((h * hd + 2 * i + j) * cols + c)] = hf[size_t((h * hd + j * hd / 2 + i) * cols + c)];
  return g;
}

GgufWriter tiny_llama_writer(bool tied, TinyLlama& tl) {
  nn::LlamaConfig& c = tl.cfg;
  c.vocab = 10; c.d_model = 8; c.n_layers = 2; c.n_heads = 2; c.n_kv_heads = 1; c.head_dim = 4;
  c.d_ff = 12; c.norm_eps = 1e-6f; c.rope_theta = 5e5f; c.tied_embeddings = tied;
  const uint64_t d = 8, q = 8, kv = 4, ff = 12;
  GgufWriter w;
  w.str("general.architecture", "llama").u32("llama.block_count", 2).u32("llama.embedding_length", 8)
      .u32("llama.feed_forward_length", 12).u32("llama.attention.head_count", 2)
      .u32("llama.attention.head_count_kv", 1).f32("llama.rope.freq_base", 5e5f)
      .f32("llama.attention.layer_norm_rms_epsilon", 1e-6f).u32("llama.rope.dimension_count", 4)
      .str_array("tokenizer.ggml.tokens", std::vector<std::string>(10, "t"));
  w.f32_tensor("token_embd.weight", {d, 10}, pattern(1, 10, 8));
  for (int l = 0; l < 2; ++l) {
    std::string p = "blk." + std::to_string(l) + ".";
    int tag = 10 * (l + 1);
    w.f32_tensor(p + "attn_norm.weight", {d}, pattern(tag + 1, 1, 8));
    tl.hf_q.push_back(pattern(tag + 2, q, d));
    tl.hf_k.push_back(pattern(tag + 3, kv, d));
    w.f32_tensor(p + "attn_q.weight", {d, q}, permute_like_llama_cpp(tl.hf_q.back(), 2, 4, 8));
    w.f32_tensor(p + "attn_k.weight", {d, kv}, permute_like_llama_cpp(tl.hf_k.back(), 1, 4, 8));
    w.f32_tensor(p + "attn_v.weight", {d, kv}, pattern(tag + 4, kv, d));
    w.f32_tensor(p + "attn_output.weight", {q, d}, pattern(tag + 5, d, q));
    w.f32_tensor(p + "ffn_norm.weight", {d}, pattern(tag + 6, 1, 8));
    w.f32_tensor(p + "ffn_gate.weight", {d, ff}, pattern(tag + 7, ff, d));
    w.f32_tensor(p + "ffn_up.weight", {d, ff}, pattern(tag + 8, ff, d));
    w.f32_tensor(p + "ffn_down.weight", {ff, d}, pattern(tag + 9, d, ff));
  }
  w.f32_tensor("output_norm.weight", {d}, pattern(2, 1, 8));
  if (!tied) w.f32_tensor("output.weight", {d, 10}, pattern(3, 10, 8));
  return w;
}

std::vector<float> values_of(const nn::HybridModel<float, Cpu>& m, const std::string& name) {
  const auto& t = m.params()[name].value();
  return std::vector<float>(t.data(), t.data() + t.numel());
}
std::vector<float> concat(std::vector<float> a, const std::vector<float>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST_CASE("gguf: llama loader maps every tensor and undoes the Q/K row permutation") {
  for (bool tied : {true, false}) {
    TinyLlama tl;
    GgufFile f = GgufFile::from_bytes(tiny_llama_writer(tied, tl).bytes());
    nn::LlamaConfig c = nn::llama_config_from_gguf(f);
    CHECK(c.vocab == 10);
    CHECK(c.d_model == 8);
    CHECK(c.n_layers == 2);
    CHECK(c.n_heads == 2);
    CHECK(c.n_kv_heads == 1);
    CHECK(c.head_dim == 4);
    CHECK(c.d_ff == 12);
    CHECK(c.norm_eps == 1e-6f);
    CHECK(c.rope_theta == 5e5f);
    CHECK(c.tied_embeddings == tied);
    const auto m = nn::load_gguf_model(f);
    CHECK(m.config().llama.tied_embeddings == tied);
    CHECK(values_of(m, "tok_embeddings") == pattern(1, 10, 8));
    for (int l = 0; l < 2; ++l) {
      std::string p = "layers." + std::to_string(l) + ".";
      int tag = 10 * (l + 1);
      CHECK(values_of(m, p + "attn_norm") == pattern(tag + 1, 1, 8));
      CHECK(values_of(m, p + "wqkv") == concat(concat(tl.hf_q[size_t(l)], tl.hf_k[size_t(l)]), pattern(tag + 4, 4, 8)));
      CHECK(values_of(m, p + "wo") == pattern(tag + 5, 8, 8));
      CHECK(values_of(m, p + "mlp_norm") == pattern(tag + 6, 1, 8));
      CHECK(values_of(m, p + "w_gate_up") == concat(pattern(tag + 7, 12, 8), pattern(tag + 8, 12, 8)));
      CHECK(values_of(m, p + "w_down") == pattern(tag + 9, 8, 12));
    }
    CHECK(values_of(m, "norm") == pattern(2, 1, 8));
    if (!tied) CHECK(values_of(m, "lm_head") == pattern(3, 10, 8));
  }
}

TEST_CASE("gguf: llama loader errors name the problem") {
  TinyLlama tl;
  auto msg_for = [&](const std::function<void(GgufWriter&)>& edit) {
    GgufWriter w = tiny_llama_writer(true, tl);
    edit(w);
    return error_of([&] {
      GgufFile f = GgufFile::from_bytes(w.bytes());
      (void)nn::load_gguf_model(f);
    });
  };
  auto has = [](const std::string& msg, const char* phrase) {
    INFO(msg);
    CHECK(msg.find(phrase) != std::string::npos);
  };
  has(msg_for([](GgufWriter& w) { w.kvs[0] = {"general.architecture", uint32_t(GgufType::string), [] { Bytes b; test::put_str(b, "gpt2"); return b; }()}; }),
      "architecture 'gpt2' is not supported");
  has(msg_for([](GgufWriter& w) { w.kvs.erase(w.kvs.begin() + 1); }), "'llama.block_count' is missing");
  has(msg_for([](GgufWriter& w) { w.tensors.erase(w.tensors.begin() + 3); }), "tensor 'blk.0.attn_k.weight' is missing");
  has(msg_for([](GgufWriter& w) { w.tensors[4].dims = {8, 2}; w.tensors[4].data.resize(64); }),
      "tensor 'blk.0.attn_v.weight' has shape [8, 2], expected [8, 4]");
  has(msg_for([](GgufWriter& w) { w.u32("llama.rope.dimension_count", 2); w.kvs.erase(w.kvs.begin() + 8); }),
      "rope.dimension_count 2 differs");
  has(msg_for([](GgufWriter& w) { w.u32("llama.attention.head_count", 3); w.kvs.erase(w.kvs.begin() + 4); }),
      "not a multiple of head_count 3");
}

// ---- the teacher file against the `gguf` package ---------------------------------------------

namespace {

std::string teacher_path() {
  if (const char* env = std::getenv("MIL_TEACHER_GGUF")) return env;
#ifdef MIL_SOURCE_DIR
  return std::string(MIL_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
#else
  return "models/SmolLM2-135M-Instruct.Q4_1.gguf";
#endif
}
std::string golden_path() {
  return std::string(MIL_SOURCE_DIR) + "/tests/io/golden/smollm2_gguf_golden.json";
}

}  // namespace

TEST_CASE("gguf: teacher file matches the gguf package golden values") {
  const std::string path = teacher_path();
  if (!std::filesystem::exists(path)) {
    MESSAGE("[mil] teacher model not found: test skipped");
    return;
  }
  const auto g = test::Json::load(golden_path());
  const auto& meta = g["metadata"];
  GgufFile f = GgufFile::open(path);
  CHECK(f.version() == uint32_t(meta["version"].num));
  CHECK(f.tensors().size() == size_t(meta["tensor_count"].num));
  CHECK(f.keys().size() == size_t(meta["kv_count"].num));
  CHECK(f.alignment() == int64_t(meta["alignment"].num));
  CHECK(f.data_offset() == int64_t(meta["data_offset"].num));
  CHECK(f.get_string("general.architecture") == meta["general.architecture"].str);
  CHECK(f.get_string("general.name") == meta["general.name"].str);
  for (const char* k : {"llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
                        "llama.attention.head_count", "llama.attention.head_count_kv",
                        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"})
    CHECK(f.get_u32(k) == uint32_t(meta[k].num));
  CHECK(f.get_f32("llama.rope.freq_base") == float(meta["llama.rope.freq_base"].num));
  CHECK(f.get_f32("llama.attention.layer_norm_rms_epsilon") ==
        float(meta["llama.attention.layer_norm_rms_epsilon"].num));
  const auto& tokens = f.get_string_array("tokenizer.ggml.tokens");
  CHECK(tokens.size() == size_t(meta["tokenizer.ggml.tokens.count"].num));
  for (size_t i = 0; i < meta["tokenizer.ggml.tokens.first"].size(); ++i)
    CHECK(tokens[i] == meta["tokenizer.ggml.tokens.first"][i].str);
  CHECK(f.array_size("tokenizer.ggml.merges") == int64_t(meta["tokenizer.ggml.merges.count"].num));
  auto types = f.get_i64_array("tokenizer.ggml.token_type");
  for (size_t i = 0; i < meta["tokenizer.ggml.token_type.first"].size(); ++i)
    CHECK(types[i] == int64_t(meta["tokenizer.ggml.token_type.first"][i].num));
  std::map<std::string, int> counts;
  for (const auto& t : f.tensors()) counts[std::string(io::ggml_type_info(uint32_t(t.type))->name)]++;
  for (const auto& [name, n] : meta["tensor_types"].fields) CHECK(counts[name] == int(n.num));

  for (const auto& gt : g["tensors"].items) {
    const io::TensorInfo& t = f.tensor(gt["name"].str);
    INFO(t.name);
    CHECK(io::ggml_type_info(uint32_t(t.type))->name == gt["type"].str);
    std::vector<int64_t> shape;
    for (double x : gt["shape"].numbers()) shape.push_back(int64_t(x));
    CHECK(t.shape == shape);
    CHECK(t.offset == int64_t(gt["offset"].num));
    CHECK(t.n_bytes == int64_t(gt["n_bytes"].num));
    std::vector<float> row(size_t(t.shape[0]));
    auto first = gt["first64"].numbers();
    io::dequantize_rows(t, 0, 1, row.data());
    for (size_t i = 0; i < first.size() && i < row.size(); ++i) CHECK(row[i] == doctest::Approx(first[i]).epsilon(1e-6));
    auto rows = gt["rows"].numbers();
    auto sums = gt["row_sums"].numbers();
    for (size_t k = 0; k < rows.size(); ++k) {
      io::dequantize_rows(t, int64_t(rows[k]), 1, row.data());
      double s = 0, s_abs = 0;
      for (float x : row) s += x, s_abs += std::fabs(x);
      CHECK(std::fabs(s - sums[k]) <= 1e-5 * s_abs + 1e-9);
    }
  }
}

TEST_CASE("gguf: teacher loads as a model with the SmolLM2 configuration") {
  const std::string path = teacher_path();
  if (!std::filesystem::exists(path)) {
    MESSAGE("[mil] teacher model not found: test skipped");
    return;
  }
  // Opening and loading times are measured in bench/io/bench_gguf.cpp and bench/nn.
  GgufFile f = GgufFile::open(path);
  nn::LlamaConfig c = nn::llama_config_from_gguf(f);
  CHECK(c.n_layers == 30);
  CHECK(c.d_model == 576);
  CHECK(c.n_heads == 9);
  CHECK(c.n_kv_heads == 3);
  CHECK(c.head_dim == 64);
  CHECK(c.d_ff == 1536);
  CHECK(c.vocab == 49152);
  CHECK(c.rope_theta == 1e5f);
  CHECK(c.norm_eps == doctest::Approx(1e-5));
  CHECK(c.tied_embeddings);
  const auto m = nn::load_gguf_model(f);
  CHECK(m.config().n_mamba_layers() == 0);
  // Spot checks: the first embedding row is the Q8_0 row; the final norm is copied verbatim.
  std::vector<float> row(576);
  io::dequantize_rows(f.tensor("token_embd.weight"), 0, 1, row.data());
  CHECK(std::equal(row.begin(), row.end(), m.weights().tok_embeddings.value().data()));
  auto norm = io::dequantize(f.tensor("output_norm.weight"));
  CHECK(std::equal(norm.begin(), norm.end(), m.weights().norm.value().data()));
  // K of layer 0: HF row 1 (head 0, first half, i = 1) is GGUF row 2 (i = 1, j = 0).
  io::dequantize_rows(f.tensor("blk.0.attn_k.weight"), 2, 1, row.data());
  const float* wk = m.weights().layers[0].attn.wqkv.value().data() + 576 * 576;
  CHECK(std::equal(row.begin(), row.end(), wk + 1 * 576));
  // HF row 32 (second half, i = 0) is GGUF row 1.
  io::dequantize_rows(f.tensor("blk.0.attn_k.weight"), 1, 1, row.data());
  CHECK(std::equal(row.begin(), row.end(), wk + 32 * 576));
}
