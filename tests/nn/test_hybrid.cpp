// Hybrid models on the CPU: configuration and layouts, initialisation from attention, the
// linear-attention identity of docs/METHOD.md §2, gradients of the whole hybrid in double, and the
// decoder (prefill in chunks, batched decode) against the training forward.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <span>

#include <mil/distill/init_from_attention.hpp>
#include <mil/nn/decoder.hpp>
#include <mil/nn/hybrid.hpp>
#include <mil/nn/llama_hf.hpp>

#include "common/compare.hpp"

using namespace mil;

namespace {
nn::LlamaConfig small_llama() {
  nn::LlamaConfig c;
  c.vocab = 97;
  c.d_model = 64;
  c.n_layers = 4;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.d_ff = 80;
  c.rope_theta = 10000.f;
  return c;
}

nn::HybridConfig hybrid_of(const nn::LlamaConfig& c, std::vector<int64_t> attn, nn::MixerKind k) {
  nn::HybridConfig h;
  h.llama = c;
  h.attn_layers = std::move(attn);
  h.mixer = k;
  return h;
}

std::vector<float> row_of(const Tensor<float, Cpu>& t, int64_t r) {
  const int64_t w = t.size(1);
  return std::vector<float>(t.data() + r * w, t.data() + (r + 1) * w);
}
}  // namespace

TEST_CASE("hybrid config: standard layouts and validation") {
  CHECK(nn::attention_layout(32, "50%") == std::vector<int64_t>{1, 3, 5, 7, 9, 11, 13, 15, 17, 19,
                                                                21, 23, 25, 27, 29, 31});
  CHECK(nn::attention_layout(32, "25%") == std::vector<int64_t>{3, 7, 11, 15, 19, 23, 27, 31});
  CHECK(nn::attention_layout(32, "12.5") == std::vector<int64_t>{7, 15, 23, 31});
  CHECK(nn::attention_layout(32, "0%").empty());
  CHECK(nn::attention_layout(30, "50%").size() == 15);
  CHECK_THROWS_AS(nn::attention_layout(32, "33%"), Error);
  auto h = hybrid_of(small_llama(), {1, 3}, nn::MixerKind::mamba2);
  CHECK(h.d_inner() == 64);
  CHECK(h.d_xb() == 32);
  CHECK(h.conv_channels() == 32 + 32 + 64);
  CHECK(h.in_proj_rows() == 2 * 64 + 2 * 32 + 4);
  CHECK(h.n_mamba_layers() == 2);
  h.validate();
  h.attn_layers = {3, 1};
  CHECK_THROWS_AS(h.validate(), Error);
  h.attn_layers = {1, 4};
  CHECK_THROWS_AS(h.validate(), Error);
  h.attn_layers = {1};
  h.conv_kernel = 9;
  CHECK_THROWS_AS(h.validate(), Error);
  CHECK_THROWS_AS(nn::parse_mixer("mamba3"), Error);
  CHECK(nn::parse_mixer("mamba1") == nn::MixerKind::mamba1);
}

TEST_CASE("hybrid init: attention weights land in C B x and out_proj and the rest is seeded") {
  const auto c = small_llama();
  nn::HybridModel<float, Cpu> teacher(nn::all_attention(c));
  teacher.init_random(11, 0.1f);
  const int64_t hd = c.head_dim, q = c.n_heads * hd, kv = c.n_kv_heads * hd, d = c.d_model;
  for (auto kind : {nn::MixerKind::mamba2, nn::MixerKind::mamba1}) {
    auto h = hybrid_of(c, {1, 3}, kind);
    auto m = distill::init_from_attention(teacher, h, 5);
    const auto qkv = teacher.param("layers.0.wqkv").value();
    const auto in = m.param("layers.0.in_proj").value();
    const int64_t di = h.d_inner(), dxb = h.d_xb();
    // Row offsets of x, B, C inside in_proj.
    const int64_t x0 = kind == nn::MixerKind::mamba2 ? di : 0;
    const int64_t b0 = kind == nn::MixerKind::mamba2 ? di + dxb : dxb + di;
    const int64_t c0 = kind == nn::MixerKind::mamba2 ? di + 2 * dxb : 2 * dxb + di;
    for (int64_t j = 0; j < d; ++j) {
      for (int64_t r = 0; r < kv; ++r) {
        REQUIRE(in.data()[(x0 + r) * d + j] == qkv.data()[(q + kv + r) * d + j]);
        REQUIRE(in.data()[(b0 + r) * d + j] == qkv.data()[(q + r) * d + j]);
      }
      for (int64_t r = 0; r < q; ++r) REQUIRE(in.data()[(c0 + r) * d + j] == qkv.data()[r * d + j]);
    }
    CHECK(m.param("layers.0.out_proj").value().to_vector() ==
          teacher.param("layers.0.wo").value().to_vector());
    // Shared parameters are the teacher's, attention layers included.
    for (const char* name : {"tok_embeddings", "norm", "layers.1.wqkv", "layers.1.wo",
                             "layers.0.w_gate_up", "layers.2.w_down", "layers.2.attn_norm"})
      CHECK(m.param(name).value().to_vector() == teacher.param(name).value().to_vector());
    // Fresh parameters follow docs/METHOD.md §4.
    for (float v : m.param("layers.0.D").value().to_vector()) CHECK(v == 1.f);
    const auto a_log = m.param("layers.2.A_log").value().to_vector();
    const auto dt_bias = m.param("layers.2.dt_bias").value().to_vector();
    for (size_t i = 0; i < a_log.size(); ++i) {
      if (kind == nn::MixerKind::mamba2) {
        CHECK(std::exp(a_log[i]) >= 1.f);
        CHECK(std::exp(a_log[i]) <= 16.f);
      } else {
        CHECK(a_log[i] == doctest::Approx(std::log(float(i % 16 + 1))));
      }
    }
    for (float b : dt_bias) {
      const double dt = std::log1p(std::exp(double(b)));
      CHECK(dt >= 1e-3 * 0.999);
      CHECK(dt <= 1e-1 * 1.001);
    }
    for (float w : m.param("layers.0.conv_w").value().to_vector()) CHECK(std::abs(w) <= 0.5f);
    // Seeded: the same seed gives the same model, another seed another one.
    auto again = distill::init_from_attention(teacher, h, 5);
    auto other = distill::init_from_attention(teacher, h, 6);
    CHECK(again.params().values().to_vector() == m.params().values().to_vector());
    CHECK(other.params().values().to_vector() != m.params().values().to_vector());
  }
}

TEST_CASE("hybrid init: a different teacher shape is an error") {
  auto c = small_llama();
  nn::HybridModel<float, Cpu> teacher(nn::all_attention(c));
  c.d_ff = 96;
  CHECK_THROWS_AS(distill::init_from_attention(teacher, hybrid_of(c, {1}, nn::MixerKind::mamba2), 1),
                  Error);
}

// docs/METHOD.md §2: with no decay (A_log very negative), softplus(dt + bias) = 1 and D = 0, the SSD of
// a layer initialised from attention is causal linear attention on the teacher's Q, K, V with
// GQA (no conv, no gate, no norm: the scan reads the projection directly).
TEST_CASE("hybrid init: the Mamba-2 scan on the teacher's projections is linear attention") {
  const auto c = small_llama();
  nn::HybridModel<double, Cpu> teacher(nn::all_attention(c));
  teacher.init_random(21, 0.2f);
  auto tf = nn::convert_model<float, Cpu>(teacher);
  auto h = hybrid_of(c, {}, nn::MixerKind::mamba2);
  auto m = nn::convert_model<double, Cpu>(distill::init_from_attention(tf, h, 3));
  const int64_t T = 9, d = c.d_model, hd = c.head_dim, H = c.n_heads, Hkv = c.n_kv_heads;
  const int64_t width = h.in_proj_rows(), di = h.d_inner(), dxb = h.d_xb();
  auto u = Tensor<double, Cpu>::empty(Shape{T, d});
  for (int64_t i = 0; i < u.numel(); ++i) u[i] = std::sin(0.37 * double(i)) * 0.8;
  auto proj = Tensor<double, Cpu>::empty(Shape{T, width});
  cpu::matmul(GemmShape{T, width, d, false, true}, proj.data(), u.data(),
              m.param("layers.0.in_proj").value().data());
  auto qkv = Tensor<double, Cpu>::empty(Shape{T, (H + 2 * Hkv) * hd});
  cpu::matmul(GemmShape{T, (H + 2 * Hkv) * hd, d, false, true}, qkv.data(), u.data(),
              teacher.param("layers.0.wqkv").value().data());
  // softplus(dt_raw + bias) = 1 with bias 0: dt_raw = log(e - 1); decay exp(-exp(-40)) = 1.
  for (int64_t t = 0; t < T; ++t)
    for (int64_t hh = 0; hh < H; ++hh) proj[t * width + di + 2 * dxb + di + hh] = std::log(std::exp(1.0) - 1.0);
  std::vector<double> bias(size_t(H), 0.0), a_log(size_t(H), -40.0), skip(size_t(H), 0.0);
  SsdShape s{1, T, H, Hkv, hd, hd};
  s.x_stride = s.b_stride = s.c_stride = s.dt_stride = width;
  std::vector<double> y(size_t(T * di));
  const double* p = proj.data();
  cpu::ssd_scan_forward(y.data(), p + di, p + di + dxb, p + di + 2 * dxb, p + di + 2 * dxb + di,
                        bias.data(), a_log.data(), skip.data(), s);
  std::vector<double> ref(size_t(T * di), 0.0);
  const int64_t qw = (H + 2 * Hkv) * hd;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t hh = 0; hh < H; ++hh) {
      const int64_t g = hh / (H / Hkv);
      for (int64_t s2 = 0; s2 <= t; ++s2) {
        double score = 0;
        for (int64_t i = 0; i < hd; ++i)
          score += qkv[t * qw + hh * hd + i] * qkv[s2 * qw + H * hd + g * hd + i];
        for (int64_t i = 0; i < hd; ++i)
          ref[size_t(t * di + hh * hd + i)] += score * qkv[s2 * qw + (H + Hkv) * hd + g * hd + i];
      }
    }
  test::require_close("ssd on attention weights vs linear attention", y, ref, 1e-9);
}

TEST_CASE("hybrid: gradient of the loss matches central differences (double - mamba2 and mamba1)") {
  nn::LlamaConfig c;
  c.vocab = 11;
  c.d_model = 16;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 4;
  c.d_ff = 6;
  for (auto kind : {nn::MixerKind::mamba2, nn::MixerKind::mamba1}) {
    auto h = hybrid_of(c, {1}, kind);
    h.mamba1_d_state = 4;
    h.mamba1_double_dt_bias = kind == nn::MixerKind::mamba1;
    nn::HybridModel<double, Cpu> model(h);
    model.init_random(9, 0.4f);
    auto& values = model.params().values();
    for (const auto& e : model.params().entries())
      if (e.name.ends_with("norm") || e.name.ends_with(".D"))
        for (int64_t i = 0; i < e.var.numel(); ++i) values[e.offset + i] = 1.0 + 0.1 * double(i % 3);
    const int64_t batch = 2, seq = 6;
    auto ids = Tensor<int32_t, Cpu>::from(Shape{batch * seq}, {1, 4, 2, 9, 3, 0, 10, 5, 5, 7, 2, 8});
    auto targets =
        Tensor<int32_t, Cpu>::from(Shape{batch * seq}, {4, 2, 9, 3, -100, 10, 5, 5, 7, 1, 8, 6});
    auto pos = nn::sequence_positions<Cpu>(batch, seq);
    auto loss_of = [&] {
      ag::Tape tape;
      ag::NoGrad ng(tape);
      return ag::cross_entropy(tape, model.forward(tape, ids, pos, batch, seq), targets).mean();
    };
    ag::Tape tape;
    model.params().zero_grad();
    auto loss = ag::cross_entropy(tape, model.forward(tape, ids, pos, batch, seq), targets);
    tape.backward();
    model.params().finish_backward();
    CHECK(loss.mean() > 0);
    auto analytic = model.params().grads().to_vector();
    std::vector<double> numeric(analytic.size());
    const double eps = 1e-6;
    for (size_t i = 0; i < numeric.size(); ++i) {
      double keep = values[int64_t(i)];
      values[int64_t(i)] = keep + eps;
      double plus = loss_of();
      values[int64_t(i)] = keep - eps;
      double minus = loss_of();
      values[int64_t(i)] = keep;
      numeric[i] = (plus - minus) / (2 * eps);
    }
    test::require_close(std::string("hybrid grads ") + nn::mixer_name(kind), analytic, numeric, 1e-6);
    // Every Mamba parameter got a gradient that is not all zero.
    for (const auto& e : model.params().entries()) {
      if (!e.name.starts_with("layers.0.")) continue;
      double norm = 0;
      for (int64_t i = 0; i < e.var.numel(); ++i) norm += std::abs(analytic[size_t(e.offset + i)]);
      CHECK_MESSAGE(norm > 0, e.name);
    }
  }
}

TEST_CASE("hybrid decoder: chunked prefill and batched decode follow the training forward") {
  const auto c = small_llama();
  nn::HybridModel<float, Cpu> teacher(nn::all_attention(c));
  teacher.init_random(13, 0.1f);
  for (auto kind : {nn::MixerKind::mamba2, nn::MixerKind::mamba1}) {
    for (std::vector<int64_t> attn : {std::vector<int64_t>{1, 3}, std::vector<int64_t>{}}) {
      auto h = hybrid_of(c, attn, kind);
      auto m = distill::init_from_attention(teacher, h, 17);
      const int64_t seq = 13;
      auto ids = Tensor<int32_t, Cpu>::empty(Shape{2 * seq});
      for (int64_t i = 0; i < ids.numel(); ++i) ids[i] = int32_t((i * 37 + 5) % c.vocab);
      ag::Tape tape;
      ag::NoGrad ng(tape);
      const auto full = m.forward(tape, ids, nn::sequence_positions<Cpu>(2, seq), 2, seq).value();
      // Sequence 0 in slot 1 and sequence 1 in slot 0, with different prompt lengths, prefilled
      // in chunks of 4 tokens, then decoded together one token per step.
      nn::Decoder<float, Cpu> dec(m, {.slots = 2, .max_seq = 64, .max_tokens = 4});
      const int32_t* s0 = ids.data();
      const int32_t* s1 = ids.data() + seq;
      const int64_t p0 = 7, p1 = 5;
      std::string what = std::string(nn::mixer_name(kind)) + (attn.empty() ? " 0%" : " 50%");
      dec.prefill(1, std::span(s0, size_t(p0)));
      test::require_close(what + " prefill seq 0", dec.logits_host(), row_of(full, p0 - 1), 1e-4);
      dec.prefill(0, std::span(s1, size_t(p1)));
      test::require_close(what + " prefill seq 1", dec.logits_host(), row_of(full, seq + p1 - 1), 1e-4);
      for (int64_t k = 0; k < 5; ++k) {
        const int32_t slots[2] = {1, 0};
        const int32_t next[2] = {s0[p0 + k], s1[p1 + k]};
        dec.decode(slots, next);
        const auto l = dec.logits_host();
        const std::vector<float> l0(l.begin(), l.begin() + c.vocab), l1(l.begin() + c.vocab, l.end());
        test::require_close(what + " decode seq 0", l0, row_of(full, p0 + k), 1e-4);
        test::require_close(what + " decode seq 1", l1, row_of(full, seq + p1 + k), 1e-4);
      }
      // A reset slot starts again from zero states.
      dec.reset(1);
      dec.prefill(1, std::span(s0, size_t(p0)));
      test::require_close(what + " prefill after reset", dec.logits_host(), row_of(full, p0 - 1), 1e-4);
      CHECK(dec.can_rewind() == false);
      CHECK_THROWS_AS(dec.truncate(1, 3), Error);
      dec.truncate(1, p0);  // keeping everything is fine
    }
  }
}

TEST_CASE("hybrid init: from safetensors teachers (Llama and Qwen2 with QKV biases)") {
  for (const char* name : {"hf_tiny_llama", "hf_tiny_qwen2"}) {
    CAPTURE(std::string(name));
    const auto dir = std::filesystem::path(MIL_SOURCE_DIR) / "tests/nn/golden" / name;
    const auto teacher = nn::load_llama_model_hf(dir);
    const auto& c = teacher.config().llama;
    for (auto kind : {nn::MixerKind::mamba2, nn::MixerKind::mamba1}) {
      auto h = hybrid_of(c, nn::attention_every(c.n_layers, 2), kind);
      h.mamba1_d_state = 4;  // d_xb is 8 here: the Mamba-1 layer must be valid, and it must run
      REQUIRE_NOTHROW(h.validate());
      auto m = distill::init_from_attention(teacher, h, 1);
      const std::string p = "layers.0.";
      CHECK(m.param(p + "out_proj").value().to_vector() == teacher.param(p + "wo").value().to_vector());
      if (c.attention_bias) CHECK_FALSE(m.params().has(p + "bqkv"));  // dropped: Mamba has none
      for (int64_t l : h.attn_layers)
        CHECK(m.param("layers." + std::to_string(l) + ".wqkv").value().to_vector() ==
              teacher.param("layers." + std::to_string(l) + ".wqkv").value().to_vector());
      const int64_t T = 6;
      auto ids = Tensor<int32_t, Cpu>::from(Shape{T}, {1, 2, 3, 4, 5, 6});
      ag::Tape tape;
      ag::NoGrad ng(tape);
      for (float v : m.forward(tape, ids, nn::sequence_positions<Cpu>(1, T), 1, T).value().to_vector())
        REQUIRE(std::isfinite(v));
    }
  }
}

TEST_CASE("select_layers: chosen layers keep their kind and weights, and the paper's draft layers") {
  // A 4-layer Mamba-2 hybrid with attention in layers 1 and 3.
  nn::LlamaConfig c;
  c.vocab = 40, c.d_model = 16, c.n_layers = 4, c.n_heads = 2, c.n_kv_heads = 1, c.head_dim = 8,
  c.d_ff = 24;
  nn::HybridConfig h = nn::all_attention(c);
  h.attn_layers = {1, 3};
  nn::HybridModel<float, Cpu> m(h);
  m.init_random(5, 0.3f);
  const std::vector<int64_t> keep = {0, 3};
  const auto s = nn::select_layers(m, keep);
  // Catches layers renumbered with the wrong source (layer 1 instead of 3) or losing their kind.
  CHECK(s.config().llama.n_layers == 2);
  CHECK(s.config().attn_layers == std::vector<int64_t>{1});
  auto same = [&](const std::string& mine, const std::string& theirs) {
    const auto a = s.params()[mine].value(), b = m.params()[theirs].value();
    REQUIRE(a.shape() == b.shape());
    for (int64_t i = 0; i < a.numel(); ++i) REQUIRE(a[i] == b[i]);
  };
  same("tok_embeddings", "tok_embeddings");
  same("norm", "norm");
  same("layers.0.in_proj", "layers.0.in_proj");
  same("layers.1.wqkv", "layers.3.wqkv");
  same("layers.1.w_down", "layers.3.w_down");
  same("layers.1.attn_norm", "layers.3.attn_norm");
  // Keeping every layer gives the same model: the same logits.
  const std::vector<int64_t> all = {0, 1, 2, 3};
  const auto whole = nn::select_layers(m, all);
  const std::vector<int32_t> ids = {3, 9, 27, 1, 14};
  nn::Decoder<float, Cpu> da(m, {.slots = 1, .max_seq = 16}), db(whole, {.slots = 1, .max_seq = 16});
  da.prefill(0, ids);
  db.prefill(0, ids);
  CHECK(da.logits_host() == db.logits_host());
  for (const std::vector<int64_t>& bad : {std::vector<int64_t>{}, {3, 0}, {1, 1}, {0, 4}})
    CHECK_THROWS_AS(nn::select_layers(m, bad), Error);
  CHECK(nn::draft_layers(30, 2) == std::vector<int64_t>{0, 29});
  CHECK(nn::draft_layers(30, 4) == std::vector<int64_t>{0, 10, 20, 29});
  CHECK_THROWS_AS(nn::draft_layers(30, 3), Error);
  CHECK_THROWS_AS(nn::draft_layers(3, 4), Error);
}
