// Distillation loss (CE + KL at a temperature) on the GPU, SmolLM2 shape: 8192 tokens x 49152 bf16
// logits.
//
// BM_distill_loss_gpu_bf16_fwd_bwd_in_place: the fused kernel, gradient written over the student
// logits. Floor: read student and teacher logits, write the gradient, 3 * 2 * 8192 * 49152 bytes
// = 2.42 GB -> 0.81 ms at 2.98 TB/s (1.6 GB of logits: far past the 50 MB L2, so one buffer set
// suffices). Peers for KL(teacher || student) forward + backward on the same shape, bf16, on the
// lent H100 80GB HBM3 on 2026-11-22 (docs/PERFORMANCE.md): PyTorch eager 17.6 ms, Liger-Kernel
// 14.0 ms; `peer/time` is Liger's time over ours, `eager/time` PyTorch's. Target: 1.2 ms.
//
// BM_distill_loss_lm_head_gpu_bf16: the whole loss from the final hidden states (d = 576) of
// student and teacher, with both output heads, forward and backward (the head trainable), at
// chunk_rows = 1024 (distill_loss_lm_head) and unchunked (ag::linear, then distill_loss). Reports
// the GPU memory the step takes beyond its inputs, as the caching allocator's growth in reserved
// bytes from an empty cache (an upper bound of the peak in use), and the time.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include <mil/autograd/distill_loss.hpp>
#include <mil/core/rng.hpp>
#include <mil/core/tensor.hpp>
#include <mil/kernels/distill_loss.cuh>

#include "common/bench.hpp"
#include "common/cuda_timer.cuh"

namespace {

using namespace mil;

// Peers on the lent H100 80GB HBM3, 2026-11-22 (docs/PERFORMANCE.md).
constexpr double kLigerSeconds = 14.0e-3, kTorchEagerSeconds = 17.6e-3;
constexpr int64_t kRows = 8192, kVocab = 49152, kHidden = 576;

template <class T>
__global__ void distill_bench_fill_kernel(T* p, int64_t n, uint64_t seed, float lo, float hi) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    p[i] = T(rng::uniform(seed, 0, uint64_t(i), lo, hi));
}

template <class T>
Tensor<T, Cuda> random_tensor(Shape shape, uint64_t seed, float lo, float hi) {
  auto t = Tensor<T, Cuda>::empty(shape);
  distill_bench_fill_kernel<T>
      <<<1024, 256, 0, mil::cuda::current_stream()>>>(t.data(), t.numel(), seed, lo, hi);
  MIL_CUDA_CHECK_LAUNCH("distill_bench_fill_kernel");
  return t;
}

// Every eighth row a prompt token (ignored), as in a batch of answers.
Tensor<int32_t, Cuda> answer_labels(int64_t rows, int64_t vocab) {
  std::vector<int32_t> labels(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) labels[size_t(r)] = r % 8 ? int32_t(r * 7919 % vocab) : -100;
  return Tensor<int32_t, Cuda>::from(Shape{rows}, labels);
}

void distill_loss_gpu_bf16(benchmark::State& state, float temperature) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  {
    auto student = random_tensor<bf16>(Shape{kRows, kVocab}, 1, -8.f, 8.f);
    auto teacher = random_tensor<bf16>(Shape{kRows, kVocab}, 2, -8.f, 8.f);
    auto labels = answer_labels(kRows, kVocab);
    auto ce = Tensor<float, Cuda>::empty(Shape{kRows});
    auto kl = Tensor<float, Cuda>::empty(Shape{kRows});
    const DistillLossParams params{temperature, 1.f / float(kRows), 0.1f / float(kRows), -100};
    // In place: later iterations see earlier gradients as student logits, which costs the same.
    bench::time_cuda(state, [&](int) {
      mil::cuda::distill_loss_forward_backward<bf16>(ce.data(), kl.data(), student.data(),
                                                student.data(), teacher.data(), labels.data(),
                                                kRows, kVocab, params, mil::cuda::current_stream());
    });
    // Bytes: read both logits, write the gradient. ~30 FLOPs per element over both passes.
    const double elements = double(kRows) * double(kVocab);
    bench::report(state, 3.0 * sizeof(bf16) * elements, 30.0 * elements, bench::h100_bf16,
                  kLigerSeconds);
    state.counters["eager/time"] =
        benchmark::Counter(kTorchEagerSeconds, benchmark::Counter::kIsIterationInvariantRate);
  }
  mil::cuda::CachingAllocator::instance().release_cached();  // the next case starts clean
}
void BM_distill_loss_gpu_bf16_fwd_bwd_in_place(benchmark::State& state) {
  distill_loss_gpu_bf16(state, float(state.range(0)));
}
BENCHMARK(BM_distill_loss_gpu_bf16_fwd_bwd_in_place)
    ->Arg(1)
    ->Arg(2)
    ->ArgName("tau")
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// state.range(0): chunk rows, 0 for the unchunked form.
void BM_distill_loss_lm_head_gpu_bf16(benchmark::State& state) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t chunk = state.range(0);
  auto& allocator = mil::cuda::CachingAllocator::instance();
  {
    ag::Var<bf16, Cuda> hidden(random_tensor<bf16>(Shape{kRows, kHidden}, 3, -1.f, 1.f), true);
    ag::Var<bf16, Cuda> head(random_tensor<bf16>(Shape{kVocab, kHidden}, 4, -0.1f, 0.1f), true);
    auto teacher_hidden = random_tensor<bf16>(Shape{kRows, kHidden}, 5, -1.f, 1.f);
    auto teacher_head = random_tensor<bf16>(Shape{kVocab, kHidden}, 6, -0.1f, 0.1f);
    auto labels = answer_labels(kRows, kVocab);
    const ag::DistillLossConfig config{1.f, 0.1f, 1.f, false, -100};
    ag::Tape tape;
    auto step = [&] {
      hidden.release_grad();
      head.release_grad();
      if (chunk > 0) {
        (void)ag::distill_loss_lm_head(tape, hidden, head, teacher_hidden, teacher_head, labels,
                                       config, chunk);
      } else {
        auto logits = ag::linear(tape, hidden, head);
        Tensor<bf16, Cuda> teacher_logits = Tensor<bf16, Cuda>::empty(Shape{kRows, kVocab});
        mil::cuda::matmul(GemmShape{kRows, kVocab, kHidden, false, true}, teacher_logits.data(),
                     teacher_hidden.data(), teacher_head.data(), mil::cuda::current_stream());
        (void)ag::distill_loss(tape, logits, teacher_logits, labels, config);
      }
      tape.backward();
    };
    bench::time_cuda_step(state, step);
    // Bytes: both logits read and the gradient written once (the chunked form's compulsory
    // traffic is far less: that is the point), FLOPs: the four head products.
    const double elements = double(kRows) * double(kVocab);
    bench::report(state, 3.0 * sizeof(bf16) * elements, 4 * 2.0 * elements * double(kHidden),
                  bench::h100_bf16);
  }
  allocator.release_cached();
}
BENCHMARK(BM_distill_loss_lm_head_gpu_bf16)
    ->Arg(0)
    ->Arg(1024)
    ->Arg(2048)
    ->ArgName("chunk")
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
