#include <doctest/doctest.h>

#include <string>
#include <vector>

#include <mil/autograd/dpo_loss.hpp>
#include <mil/kernels/cross_entropy.cuh>
#include <mil/kernels/cross_entropy.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/preference_batch.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

constexpr int32_t kIgnore = -100;

using Batch = test::PreferenceBatch<float>;

// Three pairs with prompts, padding and answers of 2 to 17 tokens, logits representable in T.
template <class T>
Batch make_batch(int64_t vocab, uint64_t seed) {
  return test::make_preference_batch<T, float>({3, 3, 1, 1, 0, 5}, {9, 2, 17, 11, 4, 4},
                                               {0, 7, 0, 6, 2, 0}, vocab, seed, 8.f, 4.0);
}

template <class T, Device D>
std::pair<ag::DpoLoss, std::vector<float>> run_op(const Batch& b, const ag::DpoLossConfig& c) {
  ag::Tape tape;
  ag::Var<T, D> logits(Tensor<T, D>::from(Shape{b.rows, b.vocab}, test::cast_vector<T>(b.logits)),
                       true);
  const auto targets = Tensor<int32_t, D>::from(Shape{b.rows}, b.targets);
  const auto loss = ag::dpo_loss(tape, logits, targets, b.offsets, b.ref, c);
  tape.backward();
  return {loss, test::cast_vector<float>(logits.grad().to_vector())};
}

const ag::DpoLossConfig kConfigs[] = {{0.1, 0.0, DpoObjective::sigmoid, kIgnore},
                                      {0.5, 0.2, DpoObjective::sigmoid, kIgnore},
                                      {0.1, 0.0, DpoObjective::ipo, kIgnore},
                                      {0.1, 0.0, DpoObjective::sigmoid, kIgnore, 0.7}};

// The cross-entropy kernel with row scales on the GPU against the CPU in float, on the same
// T-rounded logits: out of place, with the gradient misaligned against the logits (element
// stores), and in place.
template <class T>
void check_row_scales(int64_t rows, int64_t vocab, uint64_t seed) {
  const std::string what = std::string("cuda cross_entropy row scales ") + test::type_name<T>() +
                           " rows=" + std::to_string(rows) + " vocab=" + std::to_string(vocab);
  const auto x = test::representable<T>(size_t(rows * vocab), seed, -8.f, 8.f);
  std::vector<int32_t> targets;
  for (int64_t r = 0; r < rows; ++r)
    targets.push_back(r % 4 == 1 ? kIgnore : int32_t((r * 7919 + int64_t(seed)) % vocab));
  const auto scales = test::random_vector<float>(size_t(rows), seed + 1, -3.f, 3.f);
  std::vector<float> ref_loss(static_cast<size_t>(rows)), ref_grad(x.size());
  cpu::cross_entropy_forward_backward<float>(ref_loss.data(), ref_grad.data(), x.data(),
                                             targets.data(), rows, vocab, 0.5f, kIgnore,
                                             scales.data());
  const auto logits = test::cast_vector<T>(x);
  const auto targets_gpu = test::to_gpu(targets);
  const auto scales_gpu = test::to_gpu(scales);
  cudaStream_t stream = mil::cuda::current_stream();
  for (int64_t offset : {0, 1}) {
    auto x_gpu = test::to_gpu(logits);
    auto dx = test::poisoned_gpu<T>(logits.size() + size_t(offset));
    auto losses = test::poisoned_gpu<float>(size_t(rows));
    mil::cuda::cross_entropy_forward_backward<T>(losses.data(), dx.data() + offset, x_gpu.data(),
                                                 targets_gpu.data(), rows, vocab, 0.5f, kIgnore,
                                                 scales_gpu.data(), stream);
    const std::string how = what + " offset " + std::to_string(offset);
    test::require_close(how + " losses", losses.to_vector(), ref_loss, 1e-5);
    test::require_close(how + " gradient", test::download(dx, offset), ref_grad,
                        test::tolerance<T>());
  }
  auto in_place = test::to_gpu(logits);
  auto losses = test::poisoned_gpu<float>(size_t(rows));
  mil::cuda::cross_entropy_forward_backward<T>(losses.data(), in_place.data(), in_place.data(),
                                               targets_gpu.data(), rows, vocab, 0.5f, kIgnore,
                                               scales_gpu.data(), stream);
  test::require_close(what + " in place gradient", in_place.to_vector(), ref_grad,
                      test::tolerance<T>());
}

// ag::dpo_loss on the GPU in T against the CPU op in float on the same (T-rounded) logits, at
// SmolLM2's vocabulary (staged in bf16, read twice in float).
template <class T>
void check_op(const ag::DpoLossConfig& c, uint64_t seed) {
  const std::string what = std::string(c.objective == DpoObjective::ipo ? "ipo" : "sigmoid") +
                           " eps=" + std::to_string(c.label_smoothing) + " " + test::type_name<T>();
  const Batch b = make_batch<T>(49152, seed);
  const auto [ref, ref_grad] = run_op<float, Cpu>(b, c);
  const auto [gpu, grad] = run_op<T, Cuda>(b, c);
  test::require_close(what + " logp", gpu.policy_logps, ref.policy_logps, 1e-6);
  // h is a difference of sums of hundreds: their float rounding is ~1e-5 of the margin.
  test::require_close(what + " pair losses", gpu.pair_losses, ref.pair_losses, 1e-4);
  test::require_close(what + " gradient", grad, ref_grad, test::tolerance<T>());
  CHECK(gpu.accuracy() == ref.accuracy());
}

// dpo_loss_lm_head on the GPU in T (hidden states and head representable in T, trainable)
// against the unchunked CPU form in float on the same values.
template <class T>
void check_lm_head(int64_t chunk, double logp_tol, double grad_tol) {
  const int64_t dim = 64, vocab = 4099;
  const Batch b = make_batch<float>(vocab, 31);
  const int64_t rows = b.rows;
  const auto h = test::representable<T>(size_t(rows * dim), 32, -1.f, 1.f);
  const auto w = test::representable<T>(size_t(vocab * dim), 33, -0.5f, 0.5f);
  const ag::DpoLossConfig c{0.5, 0.1, DpoObjective::sigmoid, kIgnore};
  ag::Tape cpu_tape;
  ag::Var<float, Cpu> hc(Tensor<float, Cpu>::from(Shape{rows, dim}, h), true);
  ag::Var<float, Cpu> wc(Tensor<float, Cpu>::from(Shape{vocab, dim}, w), true);
  const auto ref = ag::dpo_loss_lm_head(cpu_tape, hc, wc,
                                        Tensor<int32_t, Cpu>::from(Shape{rows}, b.targets),
                                        b.offsets, b.ref, c, rows);
  cpu_tape.backward();

  ag::Tape tape;
  ag::Var<T, Cuda> hg(Tensor<T, Cuda>::from(Shape{rows, dim}, test::cast_vector<T>(h)), true);
  ag::Var<T, Cuda> wg(Tensor<T, Cuda>::from(Shape{vocab, dim}, test::cast_vector<T>(w)), true);
  const auto targets = Tensor<int32_t, Cuda>::from(Shape{rows}, b.targets);
  const auto loss = ag::dpo_loss_lm_head(tape, hg, wg, targets, b.offsets, b.ref, c, chunk);
  tape.backward();
  const std::string what = std::string("gpu lm_head ") + test::type_name<T>() + " chunk " +
                           std::to_string(chunk);
  test::require_close(what + " logp", loss.policy_logps, ref.policy_logps, logp_tol);
  test::require_close(what + " d hidden", test::cast_vector<float>(hg.grad().to_vector()),
                      hc.grad().to_vector(), grad_tol);
  test::require_close(what + " d head", test::cast_vector<float>(wg.grad().to_vector()),
                      wc.grad().to_vector(), grad_tol);
}

}  // namespace

TEST_CASE("dpo_loss cuda: cross-entropy row scales match the CPU - staged or not") {
  // 49152: staged in bf16, read twice in float; 131073: too wide to stage in either type.
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 10;
  for (int64_t vocab : {777, 49152, 131073}) {
    check_row_scales<bf16>(9, vocab, seed++);
    check_row_scales<float>(9, vocab, seed++);
  }
}

TEST_CASE("dpo_loss cuda: the op on the GPU matches the CPU op - float and bf16") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 21;
  for (const auto& c : kConfigs) {
    check_op<float>(c, seed++);
    check_op<bf16>(c, seed++);
  }
}

TEST_CASE("dpo_loss cuda: the chunked LM-head form matches the CPU - float and bf16") {
  MIL_GPU_TEST_GUARD();
  // Chunks of 20 rows hold one pair each, 1024 all three.
  check_lm_head<float>(20, 1e-5, 1e-4);
  check_lm_head<float>(1024, 1e-5, 1e-4);
  // bf16 logits are rounded once more than the float reference's (to bf16 after the product):
  // log-probabilities of a few tens of tokens agree to about 1e-3 relative, and the gradients
  // are rounded to bf16 as well.
  check_lm_head<bf16>(20, 1e-2, 3e-2);
}
