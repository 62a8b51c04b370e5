// The whole Llama forward/backward through the tape, in double, against central differences of
// the loss: proves every op's backward and the gradient write modes compose correctly.
#include <doctest/doctest.h>

#include <mil/nn/hybrid.hpp>

#include "common/compare.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {
nn::LlamaConfig tiny_config() {
  nn::LlamaConfig c;
  c.vocab = 11;
  c.d_model = 8;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 2;
  c.d_ff = 6;
  c.rope_theta = 10000.f;
  return c;
}
}  // namespace

TEST_CASE("llama: gradient of the loss matches central differences (double - tied and untied)") {
  for (bool tied : {true, false}) {
    auto cfg = tiny_config();
    cfg.tied_embeddings = tied;
    nn::HybridModel<double, Cpu> model(nn::all_attention(cfg));
    model.init_random(7, 0.5f);
    // Norm weights away from 1 so their gradients are exercised non-trivially.
    auto& values = model.params().values();
    for (const auto& e : model.params().entries())
      if (e.name.ends_with("norm"))
        for (int64_t i = 0; i < e.var.numel(); ++i) values[e.offset + i] = 1.0 + 0.1 * double(i % 3);
    const int64_t batch = 2, seq = 5;
    auto ids = Tensor<int32_t, Cpu>::from(Shape{batch * seq}, {1, 4, 2, 9, 3, 0, 10, 5, 5, 7});
    auto targets = Tensor<int32_t, Cpu>::from(Shape{batch * seq}, {4, 2, 9, 3, -100, 10, 5, 5, 7, 1});
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
    // Every parameter element (the model is tiny): central differences of the mean loss.
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
    test::require_close(tied ? "llama grads (tied)" : "llama grads (untied)", analytic, numeric, 1e-6);
  }
}

TEST_CASE("llama: frozen parameters get no gradient and a zero slot in the flat buffer") {
  auto cfg = tiny_config();
  nn::HybridModel<double, Cpu> model(nn::all_attention(cfg));
  model.init_random(3);
  for (const auto& e : model.params().entries())
    if (e.name.find("w_gate_up") != std::string::npos || e.name.find("w_down") != std::string::npos)
      e.var.set_requires_grad(false);
  const int64_t batch = 1, seq = 4;
  auto ids = Tensor<int32_t, Cpu>::from(Shape{seq}, {1, 2, 3, 4});
  auto pos = nn::sequence_positions<Cpu>(batch, seq);
  model.params().grads().copy_from(Tensor<double, Cpu>::from(
      Shape{model.params().numel()}, std::vector<double>(size_t(model.params().numel()), 5.0)));
  ag::Tape tape;
  (void)ag::cross_entropy(tape, model.forward(tape, ids, pos, batch, seq), ids);
  tape.backward();
  model.params().finish_backward();
  for (const auto& e : model.params().entries()) {
    bool frozen = !e.var.requires_grad();
    CHECK(e.var.has_grad() == !frozen);
    double sum_abs = 0;
    for (int64_t i = 0; i < e.var.numel(); ++i) sum_abs += std::fabs(model.params().grads()[e.offset + i]);
    if (frozen) CHECK_MESSAGE(sum_abs == 0, e.name);
    else CHECK_MESSAGE(sum_abs > 0, e.name);
  }
}

TEST_CASE("llama: config validation names the problem") {
  auto cfg = tiny_config();
  cfg.n_kv_heads = 3;
  CHECK_THROWS_WITH_AS(cfg.validate(), doctest::Contains("not a multiple of 3 KV heads"), Error);
  cfg = tiny_config();
  cfg.head_dim = 3;
  CHECK_THROWS_AS(cfg.validate(), Error);
}
