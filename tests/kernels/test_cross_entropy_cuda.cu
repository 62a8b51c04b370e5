#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include <mil/kernels/cross_entropy.cuh>
#include <mil/kernels/cross_entropy.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

// The gradient split into its target elements (dloss * (p_t - 1)) and all the others
// (dloss * p_j): compared separately, so the -1 of the targets cannot hide softmax errors.
template <class T>
void compare_gradient(const std::string& what, const std::vector<T>& out,
                      const std::vector<float>& ref, const std::vector<int32_t>& targets,
                      int64_t vocab, double tol) {
  std::vector<double> out_target, ref_target, out_rest, ref_rest;
  for (size_t i = 0; i < out.size(); ++i) {
    const int64_t row = int64_t(i) / vocab, col = int64_t(i) % vocab;
    const bool is_target = targets[size_t(row)] == col;
    (is_target ? out_target : out_rest).push_back(double(to_acc(out[i])));
    (is_target ? ref_target : ref_rest).push_back(double(ref[i]));
  }
  test::require_close(what + " gradient (targets)", out_target, ref_target, tol);
  test::require_close(what + " gradient (others)", out_rest, ref_rest, tol);
}

// GPU against the CPU reference (in float, on the same T-rounded logits) at one size: out of
// place into a poisoned buffer, out of place into a buffer aligned differently from the logits
// (element stores), in place on logits starting off a 16-byte boundary, and forward only. Every
// fifth row (from row 3) is ignored.
template <class T>
void check_cross_entropy(int64_t rows, int64_t vocab, uint64_t seed) {
  const std::string what = std::string("cuda cross_entropy ") +
                           test::type_name<T>() +
                           " rows=" + std::to_string(rows) + " vocab=" + std::to_string(vocab);
  const size_t n = size_t(rows * vocab);
  const auto values = test::representable<T>(n, seed, -8.f, 8.f);
  const auto logits = test::cast_vector<T>(values);
  std::vector<int32_t> targets(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t target = (r * 7919 + int64_t(seed)) % vocab;
    targets[size_t(r)] = r % 5 == 3 ? int32_t(-100) : int32_t(target);
  }
  const int64_t count = cpu::count_targets(targets.data(), rows, -100);
  const float dloss = count ? 1.f / float(count) : 0.f;

  std::vector<float> ref_losses(static_cast<size_t>(rows)), ref(n);
  cpu::cross_entropy_forward_backward<float>(ref_losses.data(), ref.data(), values.data(),
                                             targets.data(), rows, vocab, dloss);
  auto targets_gpu = test::to_gpu(targets);
  const double tol = test::tolerance<T>();
  cudaStream_t stream = cuda::current_stream();

  for (int64_t dlogits_offset : {0, 1}) {  // 1: misaligned against the logits
    auto logits_gpu = test::to_gpu(logits);
    auto dlogits_gpu = test::poisoned_gpu<T>(n + size_t(dlogits_offset));
    auto losses_gpu = test::poisoned_gpu<float>(size_t(rows));
    cuda::cross_entropy_forward_backward<T>(losses_gpu.data(), dlogits_gpu.data() + dlogits_offset,
                                            logits_gpu.data(), targets_gpu.data(), rows, vocab,
                                            dloss, -100, stream);
    const std::string how =
        what + " out of place, dlogits offset " + std::to_string(dlogits_offset);
    test::require_close(how + " loss", losses_gpu.to_vector(), ref_losses, 1e-5);
    compare_gradient(how, test::download(dlogits_gpu, dlogits_offset), ref, targets, vocab, tol);
    // The input is untouched.
    CHECK(test::bytes_of(logits_gpu.to_vector()) == test::bytes_of(logits));
  }
  {
    const int64_t offset = 3;
    auto buffer = test::gpu_at_offset(logits, offset);
    auto losses_gpu = test::poisoned_gpu<float>(size_t(rows));
    cuda::cross_entropy_forward_backward<T>(losses_gpu.data(), buffer.data() + offset,
                                            buffer.data() + offset, targets_gpu.data(), rows, vocab,
                                            dloss, -100, stream);
    test::require_close(what + " in place loss", losses_gpu.to_vector(), ref_losses, 1e-5);
    compare_gradient(what + " in place", test::download(buffer, offset), ref, targets, vocab, tol);
  }
  {
    auto logits_gpu = test::to_gpu(logits);
    auto losses_gpu = test::poisoned_gpu<float>(size_t(rows));
    cuda::cross_entropy_forward_backward<T>(losses_gpu.data(), nullptr, logits_gpu.data(),
                                            targets_gpu.data(), rows, vocab, dloss, -100, stream);
    test::require_close(what + " forward only loss", losses_gpu.to_vector(), ref_losses, 1e-5);
  }
}

template <class T>
void check_all_sizes(uint64_t seed) {
  // 49152: SmolLM2's vocabulary; 49157: odd, so rows start at every alignment; 131073: too wide
  // for shared memory in bf16 and float (the second-read path).
  for (int64_t vocab : {5, 1000, 49152, 49157, 131073})
    for (int64_t rows : {1, 7, 129}) check_cross_entropy<T>(rows, vocab, seed++);
}

}  // namespace

TEST_CASE("cross_entropy cuda: bf16 matches the CPU at awkward sizes - in place and not") {
  MIL_GPU_TEST_GUARD();
  check_all_sizes<bf16>(100);
}

TEST_CASE("cross_entropy cuda: float matches the CPU at awkward sizes - in place and not") {
  MIL_GPU_TEST_GUARD();
  check_all_sizes<float>(200);
}

TEST_CASE("cross_entropy cuda: logits near 1e4 are as accurate as logits near 0") {
  MIL_GPU_TEST_GUARD();
  const int64_t rows = 3, vocab = 4099;
  auto small = test::random_vector<float>(size_t(rows * vocab), 301, -4.f, 4.f);
  for (float& x : small) x = std::round(x * 64.f) / 64.f;  // 1e4 + x stays exact in float
  std::vector<float> large(small.size());
  for (size_t i = 0; i < small.size(); ++i) large[i] = 1e4f + small[i];
  std::vector<int32_t> targets{17, 4098, 0};
  std::vector<float> ref_losses(rows), ref(small.size());
  cpu::cross_entropy_forward_backward<float>(ref_losses.data(), ref.data(), small.data(),
                                             targets.data(), rows, vocab, 1.f);
  auto logits = test::to_gpu(large);
  auto targets_gpu = test::to_gpu(targets);
  auto losses = test::poisoned_gpu<float>(rows);
  cuda::cross_entropy_forward_backward<float>(losses.data(), logits.data(), logits.data(),
                                              targets_gpu.data(), rows, vocab, 1.f, -100,
                                              cuda::current_stream());
  test::require_close("cuda cross_entropy 1e4 loss", losses.to_vector(), ref_losses, 1e-5);
  compare_gradient("cuda cross_entropy 1e4", logits.to_vector(), ref, targets, vocab, 1e-5);
}

TEST_CASE("cross_entropy cuda: an invalid target makes only its own row NaN") {
  MIL_GPU_TEST_GUARD();
  const int64_t rows = 4, vocab = 777;
  auto values = test::representable<bf16>(size_t(rows * vocab), 311, -3.f, 3.f);
  std::vector<int32_t> targets{5, int32_t(vocab), -100, -2};  // rows 1 and 3 invalid
  auto logits = test::to_gpu(test::cast_vector<bf16>(values));
  auto targets_gpu = test::to_gpu(targets);
  auto losses = test::poisoned_gpu<float>(rows);
  auto dlogits = test::poisoned_gpu<bf16>(size_t(rows * vocab));
  cuda::cross_entropy_forward_backward<bf16>(losses.data(), dlogits.data(), logits.data(),
                                             targets_gpu.data(), rows, vocab, 0.5f, -100,
                                             cuda::current_stream());
  auto l = losses.to_vector();
  auto d = dlogits.to_vector();
  CHECK(std::isnan(l[1]));
  CHECK(std::isnan(l[3]));
  CHECK(l[2] == 0.f);
  for (int64_t j = 0; j < vocab; ++j) {
    CHECK(std::isnan(float(d[size_t(vocab + j)])));
    CHECK(float(d[size_t(2 * vocab + j)]) == 0.f);
  }
  // Row 0 is still right.
  std::vector<float> ref_loss(1), ref(static_cast<size_t>(vocab));
  cpu::cross_entropy_forward_backward<float>(ref_loss.data(), ref.data(), values.data(),
                                             targets.data(), 1, vocab, 0.5f);
  CHECK(l[0] == doctest::Approx(ref_loss[0]).epsilon(1e-5));
  std::vector<bf16> row0(d.begin(), d.begin() + vocab);
  test::require_close("cuda cross_entropy valid row", row0, ref, 1e-2);
}
