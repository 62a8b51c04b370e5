// Block-format weights (nn/block_weights.hpp): a matrix joined from tensors of several types and
// row orders computes the float product of its rows; the decoder on block weights stays close to
// the float path on the same weights and keeps the step plan's contract (verifying k tokens equals
// k decode steps, bitwise) for all three layer kinds; the teacher's block matrices hold exactly its
// float weights, row for row (the Q/K RoPE order included).
#include <doctest/doctest.h>

#include <cstring>
#include <memory>
#include <vector>

#include <mil/core/threads.hpp>
#include <mil/kernels/linear_rows.hpp>
#include <mil/nn/block_weights.hpp>
#include <mil/nn/decoder.hpp>

#include "common/compare.hpp"
#include "common/error_of.hpp"
#include "common/random.hpp"
#include "common/random_blocks.hpp"
#include "common/small_hybrid.hpp"
#include "common/teacher.hpp"
#include "common/threads_scope.hpp"

using namespace mil;
using io::GgmlType;

namespace {

// A tensor of `rows` random rows of `in` weights in `type`, as a GGUF file would describe it.
struct RandomTensor {
  test::Bytes bytes;
  io::TensorInfo info;
  RandomTensor(GgmlType type, int64_t rows, int64_t in, uint32_t seed)
      : bytes(test::random_weights(type, rows, in, seed)) {
    info.name = "t" + std::to_string(seed);
    info.shape = {in, rows};
    info.type = type;
    info.n_bytes = int64_t(bytes.size());
    info.data = bytes.data();
  }
  std::vector<float> row(int64_t r) const {
    const int64_t in = info.shape[0], rb = io::ggml_row_bytes(info.type, in);
    std::vector<float> w(static_cast<size_t>(in));
    io::dequantize_row(info.type, bytes.data() + r * rb, w.data(), in);
    return w;
  }
};

// The rows of these tensors one after another, dequantised: the float matrix a BlockMatrix of
// them in this order stands for.
std::vector<float> stacked_rows(std::initializer_list<const RandomTensor*> tensors) {
  std::vector<float> w;
  for (const auto* t : tensors)
    for (int64_t r = 0; r < t->info.rows(); ++r) {
      const auto row = t->row(r);
      w.insert(w.end(), row.begin(), row.end());
    }
  return w;
}

// y = x W^T in float through cpu::linear_rows (the float path's product).
std::vector<float> float_product(const std::vector<float>& w, int64_t out, int64_t in,
                                 const std::vector<float>& x, int64_t rows) {
  std::vector<float> y(size_t(rows * out));
  cpu::linear_rows(y.data(), x.data(), w.data(), rows, out, in, false);
  return y;
}

// A model's attention, MLP and LM-head weights replaced by random Q4_1 / Q8_0 blocks: the block
// weights, and the float weights set to their dequantised values, so both paths compute the same
// model. wqkv joins a Q4_1, a Q8_0 (in a reversed row order) and a Q4_1 tensor; gate_up two Q4_1
// tensors (one part); down Q8_0.
struct BlockModel {
  std::vector<RandomTensor> tensors;  // kept alive: BlockMatrix copies, but rows are re-read
  std::shared_ptr<nn::BlockWeights> blocks = std::make_shared<nn::BlockWeights>();

  void fill(nn::BlockMatrix& m, const ag::Var<float, Cpu>& w, std::vector<GgmlType> types,
            uint32_t seed) {
    const int64_t out = w.shape()[0], in = w.shape()[1];
    const int64_t parts = int64_t(types.size()), each = out / parts;
    m = nn::BlockMatrix(in);
    float* dst = w.value().data();
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t rows = p + 1 == parts ? out - each * (parts - 1) : each;
      const RandomTensor& t = tensors.emplace_back(types[size_t(p)], rows, in, seed + uint32_t(p));
      std::vector<int64_t> order;
      if (p == 1)
        for (int64_t r = rows - 1; r >= 0; --r) order.push_back(r);
      m.append(t.info, order);
      for (int64_t r = 0; r < rows; ++r) {
        const auto row = t.row(order.empty() ? r : order[size_t(r)]);
        std::memcpy(dst + (m.out() - rows + r) * in, row.data(), row.size() * sizeof(float));
      }
    }
  }

  explicit BlockModel(nn::HybridModel<float, Cpu>& model) {
    tensors.reserve(64);
    const auto& c = model.config().llama;
    blocks->layers.resize(size_t(c.n_layers));
    uint32_t seed = 100;
    for (int64_t l = 0; l < c.n_layers; ++l) {
      auto& w = model.layer(l);
      auto& b = blocks->layers[size_t(l)];
      if (w.kind == nn::LayerKind::attention) {
        fill(b.wqkv, w.attn.wqkv, {GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_1}, seed += 10);
        fill(b.wo, w.attn.wo, {GgmlType::Q8_0}, seed += 10);
      }
      fill(b.gate_up, w.mlp.w_gate_up, {GgmlType::Q4_1, GgmlType::Q4_1}, seed += 10);
      fill(b.down, w.mlp.w_down, {GgmlType::Q8_0}, seed += 10);
    }
    fill(blocks->lm_head, model.weights().lm_head, {GgmlType::Q8_0}, seed += 10);
  }
};

nn::HybridConfig block_config(nn::LayerKind kind) {
  nn::HybridConfig h = test::small_hybrid_config(kind);
  h.llama.d_ff = 64;  // every product's input width a whole number of 32-weight blocks
  return h;
}

std::vector<int32_t> tokens(int64_t n, int32_t seed, int32_t vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[size_t(i)] = int32_t((seed * 37 + i * 11 + i * i) % vocab);
  return t;
}

std::vector<float> rows_of(const std::vector<float>& m, int64_t first, int64_t n, int64_t cols) {
  return {m.begin() + first * cols, m.begin() + (first + n) * cols};
}

}  // namespace

TEST_CASE("block matrix: parts of several types and row orders compute the float product of its rows") {
  const int64_t in = 96;
  const RandomTensor a(GgmlType::Q4_1, 5, in, 1), b(GgmlType::Q8_0, 3, in, 2),
      c(GgmlType::Q4_1, 4, in, 3), d(GgmlType::Q4_1, 2, in, 4);
  const std::vector<int64_t> order_b = {2, 0, 1};
  nn::BlockMatrix m(in);
  m.append(a.info);
  m.append(b.info, order_b);
  m.append(c.info);
  m.append(d.info);  // same type as c: one part
  REQUIRE(m.out() == 14);
  REQUIRE(m.parts().size() == 3);
  CHECK(m.parts()[2].rows == 6);
  CHECK(m.n_bytes() == a.info.n_bytes + b.info.n_bytes + c.info.n_bytes + d.info.n_bytes);

  // The matrix's rows: a's, b's in order_b, c's then d's.
  std::vector<float> w;
  auto add = [&](const RandomTensor& t, int64_t r) {
    const auto row = t.row(r);
    w.insert(w.end(), row.begin(), row.end());
  };
  for (int64_t r = 0; r < 5; ++r) add(a, r);
  for (int64_t r : order_b) add(b, r);
  for (int64_t r = 0; r < 4; ++r) add(c, r);
  for (int64_t r = 0; r < 2; ++r) add(d, r);
  std::vector<float> row(static_cast<size_t>(in));
  for (int64_t r = 0; r < m.out(); ++r) {
    m.dequantize_row(r, row.data());
    CHECK_MESSAGE(row == rows_of(w, r, 1, in), "row ", r);
  }

  for (int64_t rows : {1, 3, 9}) {
    CAPTURE(rows);
    const auto x = test::random_vector<float>(size_t(rows * in), 7 + uint64_t(rows));
    const auto ref = float_product(w, m.out(), in, x, rows);
    std::vector<float> y(ref.size(), test::poison<float>());
    m.apply(x.data(), rows, y.data(), false);
    test::require_close("apply", y, ref, 1e-5);
    // accumulate adds the product to what y holds
    std::vector<float> y2(ref.size(), 1.f), ref2(ref);
    for (float& v : ref2) v += 1.f;
    m.apply(x.data(), rows, y2.data(), true);
    test::require_close("apply, accumulate", y2, ref2, 1e-5);
  }

  CHECK(test::error_of([&] { m.dequantize_row(14, row.data()); }).find("row 14 of 14") != std::string::npos);
  nn::BlockMatrix narrow(64);
  CHECK(test::error_of([&] { narrow.append(a.info); }).find("expected rows of 64") != std::string::npos);
  const std::vector<int64_t> short_order = {0, 1};
  CHECK(test::error_of([&] { m.append(b.info, short_order); }).find("an order of 2 rows") != std::string::npos);
  io::TensorInfo f32 = a.info;
  f32.type = GgmlType::F32;
  CHECK(test::error_of([&] { m.append(f32); }).find("no block product") != std::string::npos);
  const std::vector<int64_t> bad_order = {0, 9, 1};
  CHECK(test::error_of([&] { m.append(b.info, bad_order); }).find("order names row 9") != std::string::npos);
  CHECK(m.out() == 14);  // refused appends change nothing
  CHECK(m.n_bytes() == a.info.n_bytes + b.info.n_bytes + c.info.n_bytes + d.info.n_bytes);
  m.append(d.info);  // joins the last part: its rows must follow the earlier ones directly
  m.dequantize_row(15, row.data());
  CHECK(row == d.row(1));
}

// Catches F16 / BF16 parts read as another type (a wrong conversion, a stride of the ggml block's
// 2 bytes instead of 64 per 32 values) and rows that are not whole groups of 32 accepted (the
// product would read past a row): a GGUF file's f16 or bf16 matrices stay in 2 bytes a weight.
TEST_CASE("block matrix: F16 and BF16 parts beside a quantised one") {
  const int64_t in = 96;
  const RandomTensor a(GgmlType::F16, 3, in, 41), b(GgmlType::Q8_0, 2, in, 42), c(GgmlType::BF16, 4, in, 43);
  nn::BlockMatrix m(in);
  for (const auto* t : {&a, &b, &c}) m.append(t->info);
  REQUIRE(m.parts().size() == 3);
  CHECK(m.n_bytes() == (3 + 4) * in * 2 + b.info.n_bytes);
  const std::vector<float> w = stacked_rows({&a, &b, &c});
  for (int64_t rows : {1, 5}) {
    CAPTURE(rows);
    const auto x = test::random_vector<float>(size_t(rows * in), 44 + uint64_t(rows));
    const auto ref = float_product(w, m.out(), in, x, rows);
    std::vector<float> y(ref.size(), test::poison<float>());
    m.apply(x.data(), rows, y.data(), false);
    test::require_close("f16/bf16 parts", y, ref, 1e-5);
  }
  const RandomTensor odd(GgmlType::F16, 2, 40, 45);
  nn::BlockMatrix narrow(40);
  CHECK(test::error_of([&] { narrow.append(odd.info); }).find("no block product for rows of 40") != std::string::npos);
}

TEST_CASE("block matrix: K-type parts wider than a thread task, on every product path") {
  // 70 rows span two or more column blocks of the product (at most 64 rows each), so a part's
  // later tasks start inside it while writing columns of a wider output.
  const int64_t in = 256;
  const RandomTensor a(GgmlType::Q4_K, 5, in, 21), b(GgmlType::Q6_K, 70, in, 22), c(GgmlType::Q8_0, 2, in, 23);
  nn::BlockMatrix m(in);
  for (const auto* t : {&a, &b, &c}) m.append(t->info);
  REQUIRE(m.parts().size() == 3);
  const std::vector<float> w = stacked_rows({&a, &b, &c});
  std::vector<cpu::QuantRowsPath> paths{cpu::QuantRowsPath::portable};
  if (cpu::quant_rows_avx2_supported()) paths.push_back(cpu::QuantRowsPath::avx2);
  if (cpu::quant_rows_avx512_supported()) paths.push_back(cpu::QuantRowsPath::avx512);
  for (auto path : paths)
    for (int64_t rows : {1, 10}) {
      CAPTURE(rows);
      const auto x = test::random_vector<float>(size_t(rows * in), 31 + uint64_t(rows));
      const auto ref = float_product(w, m.out(), in, x, rows);
      std::vector<float> y(ref.size(), test::poison<float>());
      m.apply(x.data(), rows, y.data(), false, path);
      const char* name = path == cpu::QuantRowsPath::avx512 ? "avx512"
                         : path == cpu::QuantRowsPath::avx2   ? "avx2"
                                                              : "portable";
      test::require_close(name, y, ref, 1e-5);
    }
}

TEST_CASE("decoder on block weights: close to the float path, and verification equals decode steps bitwise") {
  for (nn::LayerKind kind : test::kLayerKinds) {
    CAPTURE(test::layer_kind_name(kind));
    nn::HybridModel<float, Cpu> model(block_config(kind));
    model.init_random(41, 0.3f);
    const BlockModel bm(model);
    model.set_block_weights(bm.blocks);
    const int64_t vocab = model.config().llama.vocab, k1 = 5;
    const auto seq = tokens(12, 3, int32_t(vocab));
    const std::span<const int32_t> prompt = std::span(seq).first(7), verify = std::span(seq).subspan(7, k1);
    const nn::DecoderOptions o{.slots = 2, .max_seq = 32, .max_tokens = 32, .max_logits = k1};
    nn::DecoderOptions float_o = o;
    float_o.block_weights = false;

    // The same weights through float products: close, and not the same bits (the blocks ran).
    nn::Decoder<float, Cpu> blocks(model, o), floats(model, float_o);
    const nn::StepRow all{1, seq, 0, nn::RowLogits::all};
    nn::DecoderOptions many = o;
    many.max_logits = 12;
    nn::Decoder<float, Cpu> blocks_all(model, many), floats_all(model, [&] {
      auto f = many;
      f.block_weights = false;
      return f;
    }());
    blocks_all.step(std::span(&all, 1));
    floats_all.step(std::span(&all, 1));
    const auto lb = blocks_all.logits_host(), lf = floats_all.logits_host();
    test::require_close("block vs float logits", lb, lf, 1e-5);
    CHECK(lb != lf);

    for (int threads : {1, 2}) {
      CAPTURE(threads);
      test::ThreadsScope scope(threads);
      // Prefill, then 5 tokens in one step against 5 single steps.
      blocks.prefill(1, prompt);
      nn::Decoder<float, Cpu> single(model, o);
      single.prefill(1, prompt);
      CHECK(rows_of(blocks.logits_host(), 0, 1, vocab) == rows_of(single.logits_host(), 0, 1, vocab));
      const nn::StepRow row{1, verify, -1, nn::RowLogits::all};
      blocks.step(std::span(&row, 1));
      const auto verified = blocks.logits_host();
      for (int64_t i = 0; i < k1; ++i) {
        const nn::StepRow one{1, verify.subspan(size_t(i), 1)};
        single.step(std::span(&one, 1));
        CHECK_MESSAGE(rows_of(verified, i, 1, vocab) == rows_of(single.logits_host(), 0, 1, vocab),
                      "verified token ", i);
      }
      blocks.reset(1);
    }
  }
}

// The option of 8-bit activations through the decoder: it runs (other bits than float
// activations), stays near the float path (the quantisation error of a few layers: normalised
// 3e-2 bound, against about 4e-3 per product in test_quant_rows_q8), keeps verification of k
// tokens equal to k decode steps bitwise, and is refused without block weights.
TEST_CASE("decoder with 8-bit activations: near the float path, verification equals decode steps bitwise") {
  for (nn::LayerKind kind : test::kLayerKinds) {
    CAPTURE(test::layer_kind_name(kind));
    nn::HybridModel<float, Cpu> model(block_config(kind));
    model.init_random(43, 0.3f);
    const BlockModel bm(model);
    model.set_block_weights(bm.blocks);
    const int64_t vocab = model.config().llama.vocab, k1 = 5;
    const auto seq = tokens(12, 5, int32_t(vocab));
    const nn::StepRow all{1, seq, 0, nn::RowLogits::all};
    const nn::DecoderOptions many{.slots = 2, .max_seq = 32, .max_tokens = 32, .max_logits = 12};
    nn::DecoderOptions q8_many = many, float_many = many;
    q8_many.q8_activations = true;
    float_many.block_weights = false;
    nn::Decoder<float, Cpu> q8(model, q8_many), blocks(model, many), floats(model, float_many);
    for (auto* d : {&q8, &blocks, &floats}) d->step(std::span(&all, 1));
    const auto lq = q8.logits_host(), lb = blocks.logits_host(), lf = floats.logits_host();
    test::require_close("8-bit activations vs float logits", lq, lf, test::Bound{3e-2, 3e-1});
    CHECK(lq != lb);

    const nn::DecoderOptions o{.slots = 2, .max_seq = 32, .max_tokens = 32, .max_logits = k1,
                               .q8_activations = true};
    const std::span<const int32_t> prompt = std::span(seq).first(7), verify = std::span(seq).subspan(7, k1);
    for (int threads : {1, 2}) {
      CAPTURE(threads);
      test::ThreadsScope scope(threads);
      nn::Decoder<float, Cpu> batched(model, o), single(model, o);
      batched.prefill(1, prompt);
      single.prefill(1, prompt);
      const nn::StepRow row{1, verify, -1, nn::RowLogits::all};
      batched.step(std::span(&row, 1));
      const auto verified = batched.logits_host();
      for (int64_t i = 0; i < k1; ++i) {
        const nn::StepRow one{1, verify.subspan(size_t(i), 1)};
        single.step(std::span(&one, 1));
        CHECK_MESSAGE(rows_of(verified, i, 1, vocab) == rows_of(single.logits_host(), 0, 1, vocab),
                      "verified token ", i);
      }
    }
    nn::DecoderOptions no_blocks = o;
    no_blocks.block_weights = false;
    CHECK(test::error_of([&] { nn::Decoder<float, Cpu> d(model, no_blocks); }).find("8-bit activations need block weights") !=
          std::string::npos);
  }
}

TEST_CASE("block weights: a model refuses blocks of another shape") {
  nn::HybridModel<float, Cpu> model(block_config(nn::LayerKind::mamba2));
  model.init_random(5, 0.3f);
  BlockModel bm(model);
  auto fewer = std::make_shared<nn::BlockWeights>(*bm.blocks);
  fewer->layers.pop_back();
  CHECK(test::error_of([&] { model.set_block_weights(fewer); }).find("2 layers for a model of 3") != std::string::npos);
  auto swapped = std::make_shared<nn::BlockWeights>(*bm.blocks);
  std::swap(swapped->layers[1].gate_up, swapped->layers[1].down);
  CHECK(test::error_of([&] { model.set_block_weights(swapped); }).find("gate_up is") != std::string::npos);
  auto mixer = std::make_shared<nn::BlockWeights>(*bm.blocks);
  mixer->layers[0].wo = mixer->layers[1].wo;  // layer 0 is a Mamba layer
  CHECK(test::error_of([&] { model.set_block_weights(mixer); }).find("is a Mamba layer") != std::string::npos);
  CHECK(!model.block_weights());  // refused: nothing set
  model.set_block_weights(bm.blocks);
  CHECK(model.block_weights() == bm.blocks);
  // New float values make the blocks stale: they are dropped.
  model.init_random(6, 0.3f);
  CHECK(!model.block_weights());
}

TEST_CASE("block weights: the teacher's block matrices hold its float weights, row for row") {
  const test::RealTeacher* t = test::real_teacher();
  if (!t) return;
  const auto f = io::GgufFile::open(test::teacher_path().string());
  const auto& c = t->model.config().llama;
  const nn::BlockWeights b = nn::block_weights_from_gguf(f, c);
  REQUIRE(int64_t(b.layers.size()) == c.n_layers);
  auto same_rows = [](const nn::BlockMatrix& m, const ag::Var<float, Cpu>& w, const char* what) {
    CAPTURE(what);
    REQUIRE(!m.empty());
    REQUIRE(m.out() == w.shape()[0]);
    REQUIRE(m.in() == w.shape()[1]);
    std::vector<float> row(static_cast<size_t>(m.in()));
    int64_t differ = 0;
    for (int64_t r = 0; r < m.out(); ++r) {
      m.dequantize_row(r, row.data());
      differ += std::memcmp(row.data(), w.value().data() + r * m.in(), row.size() * sizeof(float)) != 0;
    }
    CHECK(differ == 0);
  };
  for (int64_t l : {int64_t(0), c.n_layers - 1}) {
    CAPTURE(l);
    const auto& w = t->model.weights().layers[size_t(l)];
    const auto& bl = b.layers[size_t(l)];
    same_rows(bl.wqkv, w.attn.wqkv, "wqkv");
    same_rows(bl.wo, w.attn.wo, "wo");
    same_rows(bl.gate_up, w.mlp.w_gate_up, "gate_up");
    same_rows(bl.down, w.mlp.w_down, "down");
  }
  same_rows(b.lm_head, t->model.weights().lm_head, "lm_head");
  // Q4_1 layers, the Q8_0 embeddings as the tied head: about the file's size, not float's.
  CHECK(b.n_bytes() < 100 * (int64_t(1) << 20));
  CHECK(b.lm_head.parts().size() == 1);
  CHECK(b.lm_head.parts()[0].type == GgmlType::Q8_0);
}

TEST_CASE("block weights: a GGUF model loaded for CPU inference holds its blocks only and decodes the same bits") {
  if (!test::real_teacher()) return;
  const auto f = io::GgufFile::open(test::teacher_path().string());
  const auto both = nn::load_gguf_model(f, nn::GgufWeights::float_and_blocks);
  const auto lean = nn::load_gguf_model(f, nn::GgufWeights::cpu_inference);
  REQUIRE(both.block_weights());
  REQUIRE(lean.block_weights());
  CHECK(both.has_float_weights());
  CHECK(!lean.has_float_weights());
  // Only the norms stay in float (30 layers x 2 x 576 + 576), and no gradient buffer.
  const auto& c = lean.config().llama;
  CHECK(lean.params().values().numel() == (2 * c.n_layers + 1) * c.d_model);
  CHECK(lean.params().trainable_numel() == 0);
  CHECK(!lean.weights().tok_embeddings.value().defined());
  CHECK(!lean.weights().layers[3].attn.wqkv.value().defined());
  CHECK(lean.weights().layers[3].mlp.norm.value().defined());

  // The same prompt through both: bitwise the same logits (the same block products; embedding rows
  // dequantised from the tied head's blocks equal the float table's).
  const std::vector<int32_t> ids = {1, 504, 3458, 282, 4649, 30, 2};
  const nn::DecoderOptions o{.max_seq = 16, .max_tokens = 16, .max_logits = 7};
  nn::Decoder<float, Cpu> a(both, o), b(lean, o);
  const nn::StepRow row{0, ids, 0, nn::RowLogits::all};
  a.step(std::span(&row, 1));
  b.step(std::span(&row, 1));
  CHECK(a.logits_host() == b.logits_host());

  // Blocks must cover every weight the model has no float values for.
  auto holes = std::make_shared<nn::BlockWeights>(*lean.block_weights());
  holes->layers[2].wqkv = nn::BlockMatrix(c.d_model);
  auto lean2 = nn::load_gguf_model(f, nn::GgufWeights::cpu_inference);
  const auto lean2_blocks = lean2.block_weights();
  CHECK(test::error_of([&] { lean2.set_block_weights(holes); }).find("layers.2.wqkv has no float values") != std::string::npos);
  CHECK(test::error_of([&] { lean2.set_block_weights(nullptr); }).find("cannot drop its blocks") != std::string::npos);
  CHECK(lean2.block_weights().get() == lean2_blocks.get());  // refused: unchanged
  CHECK(test::error_of([&] { lean2.copy_owned_from(both); }).find("block format only") != std::string::npos);
  CHECK(test::error_of([&] { lean2.init_random(1); }).find("block format only") != std::string::npos);

  // What needs the float weights says so.
  nn::DecoderOptions floats = o;
  floats.block_weights = false;
  CHECK(test::error_of([&] { nn::Decoder<float, Cpu> d(lean, floats); }).find("block format only") != std::string::npos);
  CHECK(test::error_of([&] { (void)nn::convert_model<float, Cpu>(lean); }).find("without elements") != std::string::npos);
  ag::Tape tape;
  const auto t = Tensor<int32_t, Cpu>::from(Shape{2}, {1, 2});
  CHECK(test::error_of([&] { (void)lean.forward(tape, t, nn::sequence_positions<Cpu>(1, 2), 1, 2); })
            .find("block format only") != std::string::npos);
}
