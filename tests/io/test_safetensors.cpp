// Safetensors: round trips of every dtype (in memory, one file, sharded folders), float
// conversion, a table of hand-made bad files and bad checkpoint folders (each one mil::Error with
// its own message), the writer's validation, and a file written by Python's safetensors
// (tests/io/golden/python.safetensors, made by scripts/make_safetensors_golden.py).
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include <mil/io/safetensors.hpp>
#include <mil/io/safetensors_writer.hpp>

using namespace mil;
using namespace mil::io;
namespace fs = std::filesystem;

namespace {

using Bytes = std::vector<uint8_t>;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const mil::Error& e) {
    return e.what();
  }
  return "<no error>";
}
std::string parse_error(const Bytes& b) {
  return error_of([&] { SafetensorsFile::from_bytes(b, "bad.safetensors"); });
}

// A file from a raw header text and data bytes (no padding, no checks).
Bytes raw_file(const std::string& header, size_t data_bytes = 0) {
  Bytes b;
  b.reserve(8 + header.size() + data_bytes);
  for (int i = 0; i < 8; ++i) b.push_back(uint8_t(uint64_t(header.size()) >> (8 * i)));  // LE
  for (char c : header) b.push_back(uint8_t(c));
  for (size_t i = 0; i < data_bytes; ++i) b.push_back(uint8_t(i * 7 + 1));
  return b;
}

// A fresh folder per test case (ctest runs cases in parallel processes).
fs::path scratch(const std::string& name) {
  auto d = fs::temp_directory_path() / ("mil_test_safetensors_" + name + "_" +
                                        std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::vector<std::string> files_in(const fs::path& d) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(d)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// One tensor of every dtype (element bytes i*37+k, distinct per tensor), plus a scalar and an
// empty tensor.
struct Sample {
  std::vector<Bytes> data;
  std::vector<SafetensorsEntry> entries;
};
Sample sample_entries() {
  Sample s;
  const SafetensorsDtype all[] = {
      SafetensorsDtype::BOOL, SafetensorsDtype::U8,  SafetensorsDtype::I8,
      SafetensorsDtype::F8_E5M2, SafetensorsDtype::F8_E4M3, SafetensorsDtype::F8_E5M2FNUZ,
      SafetensorsDtype::F8_E4M3FNUZ, SafetensorsDtype::F8_E8M0, SafetensorsDtype::I16,
      SafetensorsDtype::U16, SafetensorsDtype::F16, SafetensorsDtype::BF16,
      SafetensorsDtype::I32, SafetensorsDtype::U32, SafetensorsDtype::F32,
      SafetensorsDtype::F64, SafetensorsDtype::I64, SafetensorsDtype::U64,
      SafetensorsDtype::C64};
  s.data.reserve(32);
  int k = 0;
  auto add = [&](std::string name, SafetensorsDtype d, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t x : shape) n *= x;
    Bytes& b = s.data.emplace_back(size_t(n * safetensors_dtype_size(d)));
    for (size_t i = 0; i < b.size(); ++i) b[i] = uint8_t(i * 37 + k);
    if (d == SafetensorsDtype::BOOL)
      for (auto& x : b) x &= 1;
    ++k;
    s.entries.push_back({std::move(name), d, std::move(shape), b});
  };
  for (auto d : all) add("t." + std::string(safetensors_dtype_name(d)), d, {3, 1, 5});
  add("scalar", SafetensorsDtype::F32, {});
  add("empty", SafetensorsDtype::BF16, {0, 4});
  add("wörd ünïcode", SafetensorsDtype::I8, {2});
  return s;
}

void check_same(const SafetensorsFile& f, const std::vector<SafetensorsEntry>& entries) {
  REQUIRE(f.tensors().size() == entries.size());
  for (const auto& e : entries) {
    const SafetensorsTensor* t = f.find(e.name);
    REQUIRE(t);
    CHECK(t->dtype == e.dtype);
    CHECK(t->shape == e.shape);
    REQUIRE(t->data.size() == e.bytes.size());
    CHECK(std::equal(t->data.begin(), t->data.end(), e.bytes.begin()));
  }
}

}  // namespace

TEST_CASE("safetensors: every dtype round-trips in memory and through a file") {
  Sample s = sample_entries();
  const std::map<std::string, std::string> meta{{"format", "pt"}, {"note", "mil test"}};
  Bytes bytes = serialize_safetensors(s.entries, meta);
  auto f = SafetensorsFile::from_bytes(bytes);
  check_same(f, s.entries);
  CHECK(f.metadata() == meta);
  CHECK(f.header_length() % 8 == 0);
  // Descending element size in the data section: every tensor aligned to its element size.
  for (const auto& t : f.tensors()) {
    const int64_t at = int64_t(t.data.data() - f.tensors().front().data.data());
    CHECK(at % safetensors_dtype_size(t.dtype) == 0);
  }
  CHECK(f.tensor("scalar").numel() == 1);
  CHECK(f.tensor("empty").numel() == 0);

  const auto dir = scratch("roundtrip");
  write_safetensors(dir / "x.safetensors", s.entries, meta);
  CHECK(files_in(dir) == std::vector<std::string>{"x.safetensors"});  // no temporary left
  auto g = SafetensorsFile::open((dir / "x.safetensors").string());
  check_same(g, s.entries);
  CHECK(g.metadata() == meta);
  // A file moved to another object keeps its views valid.
  SafetensorsFile moved = std::move(g);
  check_same(moved, s.entries);
  fs::remove_all(dir);
}

TEST_CASE("safetensors: to_float converts F32 F16 BF16 and F64 and rejects integers") {
  const std::vector<float> v{0.f, -1.5f, 3.25f, 65504.f, 1e-3f, -0.f};
  std::vector<uint16_t> h, b;
  std::vector<double> d;
  for (float x : v) {
    h.push_back(fp16::from_float(x));
    b.push_back(bf16::from_float(x));
    d.push_back(double(x));
  }
  auto bytes_of = [](const auto& vec) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(vec.data()),
                                    vec.size() * sizeof(vec[0]));
  };
  std::vector<int32_t> ints{1, 2, 3, 4, 5, 6};
  const int64_t n = int64_t(v.size());
  auto f = SafetensorsFile::from_bytes(serialize_safetensors({
      {"f32", SafetensorsDtype::F32, {n}, bytes_of(v)},
      {"f16", SafetensorsDtype::F16, {n}, bytes_of(h)},
      {"bf16", SafetensorsDtype::BF16, {2, n / 2}, bytes_of(b)},
      {"f64", SafetensorsDtype::F64, {n}, bytes_of(d)},
      {"i32", SafetensorsDtype::I32, {n}, bytes_of(ints)},
  }));
  for (const char* name : {"f32", "f16", "bf16", "f64"}) {
    INFO(std::string(name));
    auto out = to_float(f.tensor(name));
    REQUIRE(out.size() == v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      float want = std::string(name) == "f16"    ? float(fp16::from_bits(h[i]))
                   : std::string(name) == "bf16" ? float(bf16::from_bits(b[i]))
                                                 : v[i];
      CHECK(std::memcmp(&out[i], &want, 4) == 0);
    }
  }
  CHECK(error_of([&] { to_float(f.tensor("i32")); }).find("not a floating-point type") !=
        std::string::npos);
  std::string missing = error_of([&] { f.tensor("nope"); });
  CHECK(missing.find("'<memory>'") != std::string::npos);
  CHECK(missing.find("tensor 'nope' is missing") != std::string::npos);
  CHECK(f.find("nope") == nullptr);
}

TEST_CASE("safetensors: a table of bad files gives one clear error each") {
  struct Bad {
    const char* what;
    Bytes bytes;
    const char* error;
  };
  Bytes huge(8);
  uint64_t big = uint64_t(1) << 63;
  std::memcpy(huge.data(), &big, 8);
  Bytes over_file = raw_file("{}");
  over_file[0] = 200;  // header length 200 in a 10-byte file
  const std::string t = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::vector<Bad> table = {
      {"empty file", {}, "fewer than the 8-byte header length"},
      {"header length 2^63", huge, "exceeds the limit of 100000000 bytes"},
      {"header length beyond the file", over_file, "exceeds the 2 bytes after it"},
      {"header not JSON", raw_file("{abc"), "is not valid JSON"},
      {"header with a NUL", raw_file(std::string("{}\0", 3)), "is not valid JSON"},
      {"header not UTF-8", raw_file("{\"a\xff\":{}}"), "is not valid JSON"},
      {"header not an object", raw_file("[1,2]"), "JSON but not an object"},
      {"entry not an object", raw_file(R"({"a":[1]})"), "must be an object {dtype"},
      {"missing shape", raw_file(R"({"a":{"dtype":"F32","data_offsets":[0,0]}})"),
       "tensor 'a' has no \"shape\" field"},
      {"extra field", raw_file(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":1}})", 4),
       "unexpected field \"x\""},
      {"unknown dtype", raw_file(R"({"a":{"dtype":"F17","shape":[],"data_offsets":[0,4]}})", 4),
       "unknown dtype \"F17\""},
      {"sub-byte dtype", raw_file(R"({"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", 1),
       "dtype \"F4\", which mil does not read"},
      {"dtype not a string", raw_file(R"({"a":{"dtype":5,"shape":[],"data_offsets":[0,4]}})", 4),
       "dtype must be a string"},
      {"negative dimension",
       raw_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
       "tensor 'a' shape[0] is negative"},
      {"fractional dimension",
       raw_file(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4),
       "shape[0] must be a non-negative integer"},
      {"dimension beyond int64",
       raw_file(R"({"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,1]}})", 1),
       "shape[0] must be a non-negative integer"},
      {"element count overflow",
       raw_file(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,1]}})", 1),
       "the element count of shape"},
      {"byte size overflow",
       raw_file(R"({"a":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,1]}})", 1),
       "the byte size of shape"},
      {"offsets not a pair", raw_file(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[0]}})", 4),
       "data_offsets must be [begin, end]"},
      {"negative offset", raw_file(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[-4,0]}})", 4),
       "data_offsets[0] is negative"},
      {"reversed offsets", raw_file(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[8,4]}})", 8),
       "are reversed"},
      {"offsets beyond the data", raw_file("{" + t + "}", 4),
       "extend beyond the data section of 4 bytes"},
      {"size mismatch", raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
       "hold 8 bytes but shape [3] of F32 needs 12"},
      {"overlap",
       raw_file("{" + t + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
       "tensors 'a' and 'b' overlap"},
      {"hole",
       raw_file("{" + t + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})", 20),
       "bytes [8, 12) of the data section belong to no tensor"},
      {"hole at the start", raw_file(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[4,8]}})", 8),
       "bytes [0, 4) of the data section belong to no tensor"},
      {"trailing bytes", raw_file("{" + t + "}", 12), "the last 4 bytes of the data section"},
      {"duplicate tensor", raw_file("{" + t + "," + t + "}", 8), "duplicate key \"a\""},
      {"metadata not an object", raw_file(R"({"__metadata__":[1]})"),
       "__metadata__ must be an object"},
      {"metadata value not a string", raw_file(R"({"__metadata__":{"k":1}})"),
       "__metadata__ value of \"k\" must be a string"},
      {"deep nesting",
       raw_file(R"({"__metadata__":)" + std::string(100, '[') + std::string(100, ']') + "}"),
       "nested deeper than 64"},
  };
  for (const auto& b : table) {
    INFO(std::string(b.what));
    std::string e = parse_error(b.bytes);
    INFO(e);
    CHECK(e.find("'bad.safetensors'") != std::string::npos);
    CHECK(e.find(b.error) != std::string::npos);
  }
}

TEST_CASE("safetensors: a file truncated at any byte is a clear error") {
  std::vector<float> a{1, 2, 3}, b{4, 5};
  auto bytes = [](const std::vector<float>& v) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4);
  };
  Bytes file = serialize_safetensors({{"a", SafetensorsDtype::F32, {3}, bytes(a)},
                                      {"b", SafetensorsDtype::F32, {2}, bytes(b)}},
                                     {{"format", "pt"}});
  SafetensorsFile::from_bytes(file);  // the whole file is fine
  for (size_t n = 0; n < file.size(); ++n) {
    INFO("truncated to ", n, " of ", file.size(), " bytes");
    std::string e = parse_error(Bytes(file.begin(), file.begin() + long(n)));
    INFO(e);
    CHECK(e.find("truncated") != std::string::npos);
  }
}

TEST_CASE("safetensors: the writer validates its entries and leaves no partial file") {
  const auto dir = scratch("writer");
  std::vector<float> v{1, 2};
  std::span<const uint8_t> b(reinterpret_cast<const uint8_t*>(v.data()), 8);
  auto write = [&](std::vector<SafetensorsEntry> e) {
    return error_of([&] { write_safetensors(dir / "w.safetensors", e); });
  };
  CHECK(write({{"a", SafetensorsDtype::F32, {2}, b}, {"a", SafetensorsDtype::F32, {2}, b}})
            .find("tensor 'a' is given twice") != std::string::npos);
  CHECK(write({{"a", SafetensorsDtype::F32, {3}, b}}).find("has 8 bytes, its shape and dtype F32 "
                                                          "need 12") != std::string::npos);
  CHECK(write({{"a", SafetensorsDtype::F32, {-2}, b}}).find("negative dimension") !=
        std::string::npos);
  CHECK(write({{"__metadata__", SafetensorsDtype::F32, {2}, b}}).find("is not allowed") !=
        std::string::npos);
  CHECK(write({{"bad\xff", SafetensorsDtype::F32, {2}, b}}).find("not valid UTF-8") !=
        std::string::npos);
  CHECK(error_of([&] {
          write_safetensors_sharded(dir, {{"a", SafetensorsDtype::F32, {2}, b},
                                          {"a", SafetensorsDtype::F32, {2}, b}}, 8);
        }).find("tensor 'a' is given twice") != std::string::npos);
  CHECK(files_in(dir).empty());
  CHECK(error_of([&] {
          write_safetensors(dir / "no" / "such" / "w.safetensors", {});
        }).find("cannot create a file in") != std::string::npos);
  // Overwriting keeps a complete file at every moment: the old one until the rename.
  write_safetensors(dir / "w.safetensors", {{"a", SafetensorsDtype::F32, {2}, b}});
  write_safetensors(dir / "w.safetensors", {{"b", SafetensorsDtype::F32, {1}, b.first(4)}});
  auto f = SafetensorsFile::open((dir / "w.safetensors").string());
  CHECK(f.find("b") != nullptr);
  CHECK(f.find("a") == nullptr);
  CHECK(files_in(dir) == std::vector<std::string>{"w.safetensors"});
  fs::remove_all(dir);
}

TEST_CASE("safetensors: sharded checkpoints round-trip and replace earlier saves") {
  Sample s = sample_entries();
  const auto dir = scratch("sharded");
  // 40-byte shards: the 22-tensor sample (0..120 bytes each) needs several.
  auto names = write_safetensors_sharded(dir, s.entries, 40, {{"format", "pt"}});
  REQUIRE(names.size() > 2);
  char first[64];
  std::snprintf(first, sizeof first, "model-00001-of-%05zu.safetensors", names.size());
  CHECK(names[0] == first);
  CHECK(fs::exists(dir / "model.safetensors.index.json"));
  auto index = read_json_file_strict(dir / "model.safetensors.index.json");
  int64_t total = 0;
  for (const auto& e : s.entries) total += int64_t(e.bytes.size());
  CHECK(index["metadata"]["total_size"].get<int64_t>() == total);
  CHECK(index["weight_map"].size() == s.entries.size());

  for (const auto& open : {dir, dir / "model.safetensors.index.json"}) {
    auto ck = SafetensorsCheckpoint::open(open);
    CHECK(ck.files().size() == names.size());
    CHECK(ck.metadata().at("format") == "pt");
    REQUIRE(ck.tensors().size() == s.entries.size());
    for (const auto& e : s.entries) {
      const auto& t = ck.tensor(e.name);
      CHECK(t.shape == e.shape);
      CHECK(std::equal(t.data.begin(), t.data.end(), e.bytes.begin(), e.bytes.end()));
    }
    CHECK(error_of([&] { ck.tensor("missing.weight"); }).find("tensor 'missing.weight' is "
                                                             "missing") != std::string::npos);
  }

  // Saving again in one file removes the index and the shards; then again sharded.
  write_safetensors_sharded(dir, s.entries, int64_t(1) << 30);
  CHECK(files_in(dir) == std::vector<std::string>{"model.safetensors"});
  auto one = SafetensorsCheckpoint::open(dir);
  CHECK(one.files().size() == 1);
  CHECK(one.tensors().size() == s.entries.size());
  auto again = write_safetensors_sharded(dir, s.entries, 200);
  auto left = files_in(dir);
  CHECK(left.size() == again.size() + 1);  // the shards and the index, no model.safetensors
  CHECK(std::find(left.begin(), left.end(), "model.safetensors") == left.end());
  CHECK(SafetensorsCheckpoint::open(dir).tensors().size() == s.entries.size());
  fs::remove_all(dir);
}

TEST_CASE("safetensors: bad checkpoint folders and indexes give clear errors") {
  const auto dir = scratch("bad_index");
  std::vector<float> v{1, 2, 3, 4};
  std::span<const uint8_t> b(reinterpret_cast<const uint8_t*>(v.data()), 16);
  write_safetensors(dir / "s1.safetensors", {{"a", SafetensorsDtype::F32, {4}, b}});
  write_safetensors(dir / "s2.safetensors", {{"b", SafetensorsDtype::F32, {2, 2}, b},
                                             {"a", SafetensorsDtype::F32, {4}, b}});
  auto index_error = [&](const std::string& text) {
    write_text_file_atomic(dir / "model.safetensors.index.json", text);
    return error_of([&] { SafetensorsCheckpoint::open(dir); });
  };
  struct Bad {
    const char* what;
    std::string index;
    const char* error;
  };
  const std::vector<Bad> table = {
      {"not JSON", "{", "is not valid JSON"},
      {"no weight_map", R"({"metadata":{}})", "no \"weight_map\" object"},
      {"empty weight_map", R"({"weight_map":{}})", "no \"weight_map\" object"},
      {"metadata not an object", R"({"metadata":3,"weight_map":{"a":"s1.safetensors"}})",
       "\"metadata\" must be an object"},
      {"shard not a string", R"({"weight_map":{"a":1}})", "must be a file name string"},
      {"path traversal", R"({"weight_map":{"a":"../s1.safetensors"}})", "is not a plain file name"},
      {"absolute path", R"({"weight_map":{"a":"/etc/passwd"}})", "is not a plain file name"},
      {"subfolder", R"({"weight_map":{"a":"sub/s1.safetensors"}})", "is not a plain file name"},
      {"dot-dot", R"({"weight_map":{"a":".."}})", "is not a plain file name"},
      {"missing shard", R"({"weight_map":{"a":"s9.safetensors"}})",
       "shard 's9.safetensors' (of tensor 'a') is missing from the folder"},
      {"tensor missing from its shard",
       R"({"weight_map":{"a":"s1.safetensors","zz":"s1.safetensors"}})",
       "tensor 'zz' is listed in the index for shard 's1.safetensors' but that shard does not"},
      {"tensor in two shards", R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})",
       "tensor 'a' is in both"},
      {"unlisted tensor", R"({"weight_map":{"b":"s2.safetensors"}})",
       "holds tensor 'a' that the index does not list"},
      {"duplicate key", R"({"weight_map":{"a":"s1.safetensors","a":"s1.safetensors"}})",
       "duplicate key \"a\""},
  };
  for (const auto& t : table) {
    INFO(std::string(t.what));
    std::string e = index_error(t.index);
    INFO(e);
    CHECK(e.find(t.error) != std::string::npos);
  }
  // A listed tensor in the wrong one of two shards.
  write_safetensors(dir / "s2.safetensors", {{"b", SafetensorsDtype::F32, {2, 2}, b}});
  std::string e = index_error(R"({"weight_map":{"a":"s2.safetensors","b":"s1.safetensors"}})");
  CHECK(e.find("tensor 'b' is in shard 's2.safetensors' but the index lists it in "
               "'s1.safetensors'") != std::string::npos);
  // A consistent index opens.
  index_error(R"({"metadata":{"total_size":32},"weight_map":{"a":"s1.safetensors",)"
              R"("b":"s2.safetensors"}})");
  auto ck = SafetensorsCheckpoint::open(dir);
  CHECK(ck.files().size() == 2);
  CHECK(ck.tensor("b").shape == std::vector<int64_t>{2, 2});

  fs::remove(dir / "model.safetensors.index.json");
  CHECK(error_of([&] { SafetensorsCheckpoint::open(dir); }).find("has neither model.safetensors "
                                                                "nor") != std::string::npos);
  CHECK(error_of([&] { SafetensorsCheckpoint::open(dir / "nothing.safetensors"); })
            .find("not found") != std::string::npos);
  fs::remove_all(dir);
}

// Written by Python's safetensors (Rust serializer), values made by the formula below.
TEST_CASE("safetensors: a file written by Python's safetensors reads back exactly") {
#ifdef MIL_SOURCE_DIR
  const fs::path golden = fs::path(MIL_SOURCE_DIR) / "tests/io/golden/python.safetensors";
#else
  const fs::path golden = fs::path(__FILE__).parent_path() / "golden" / "python.safetensors";
#endif
  REQUIRE(fs::exists(golden));
  auto f = SafetensorsFile::open(golden.string());
  CHECK(f.metadata().at("writer") == "scripts/make_safetensors_golden.py");
  // value i of every float tensor: (i - 7) * 0.375 (exact in all of F16, BF16, F32, F64)
  for (const char* name : {"f64", "f32", "f16", "bf16"}) {
    INFO(std::string(name));
    const auto& t = f.tensor(name);
    CHECK(t.shape == std::vector<int64_t>{3, 5});
    auto v = to_float(t);
    for (size_t i = 0; i < v.size(); ++i) CHECK(v[i] == (float(i) - 7.f) * 0.375f);
  }
  // integers: value i = (i * 37 - 100) as the type wraps it; bool: i % 3 == 0
  auto ints = [&](const char* name, auto type_tag) {
    using T = decltype(type_tag);
    const auto& t = f.tensor(name);
    REQUIRE(t.numel() == 12);
    for (int64_t i = 0; i < 12; ++i) {
      T x;
      std::memcpy(&x, t.data.data() + i * int64_t(sizeof(T)), sizeof(T));
      CHECK(x == T(i * 37 - 100));
    }
  };
  ints("i64", int64_t{});
  ints("i32", int32_t{});
  ints("i16", int16_t{});
  ints("i8", int8_t{});
  ints("u8", uint8_t{});
  ints("u16", uint16_t{});
  ints("u32", uint32_t{});
  ints("u64", uint64_t{});
  const auto& bools = f.tensor("bool");
  REQUIRE(bools.numel() == 7);
  for (int64_t i = 0; i < 7; ++i) CHECK(bools.data[size_t(i)] == (i % 3 == 0 ? 1 : 0));
  CHECK(f.tensor("scalar").shape.empty());
  CHECK(to_float(f.tensor("scalar"))[0] == 2.5f);
  CHECK(f.tensor("empty").numel() == 0);
}
