// DPO loss on the GPU, SmolLM2 shape: 8 pairs x 2 sequences x 512 tokens (64 prompt, 448 answer)
// = 8192 rows x 49152 bf16 logits.
//
// BM_dpo_loss_gpu_bf16_fwd_bwd: ag::dpo_loss forward and backward (sigmoid, beta 0.1): the
// per-sequence log-probabilities, the host's pair losses and gradients, the gradient of the
// logits. Floor: read the logits once and write their gradient once, 2 * 2 * 8192 * 49152 bytes =
// 1.61 GB -> 0.54 ms at 2.98 TB/s. The gradient needs every sequence's log-probability first, so
// the logits are read twice (forward, then backward with per-row scales): 2.42 GB, floor/time
// 0.67 at best for this structure. Peer: the same loss in PyTorch eager
// (bench/peers/dpo_loss_peer.py), 6.91 ms on the lent H100 80GB HBM3 on 2026-12-05
// (bench/results/2026-12-05-nvidia-h100-80gb-hbm3-peers.json); `peer/time` is its time over ours.
//
// BM_dpo_loss_lm_head_gpu_bf16: the whole loss from the final hidden states (d = 576) with a
// trainable output head, forward and backward, in chunks of whole pairs (dpo_loss_lm_head; 1024
// rows is one pair) and unchunked (ag::linear, then dpo_loss), with the GPU memory a step takes
// beyond its inputs (the caching allocator's growth in reserved bytes from an empty cache).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include <mil/autograd/dpo_loss.hpp>
#include <mil/core/rng.hpp>
#include <mil/core/tensor.hpp>

#include "common/bench.hpp"
#include "common/cuda_timer.cuh"

namespace {

using namespace mil;

constexpr int64_t kPairs = 8, kPrompt = 64, kAnswer = 448, kVocab = 49152, kHidden = 576;
constexpr int64_t kRows = kPairs * 2 * (kPrompt + kAnswer);
constexpr double kTorchEagerSeconds = 6.91e-3;  // peer, see above

template <class T>
__global__ void dpo_bench_fill_kernel(T* p, int64_t n, uint64_t seed, float lo, float hi) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    p[i] = T(rng::uniform(seed, 0, uint64_t(i), lo, hi));
}

template <class T>
Tensor<T, Cuda> random_tensor(Shape shape, uint64_t seed, float lo, float hi) {
  auto t = Tensor<T, Cuda>::empty(shape);
  dpo_bench_fill_kernel<T>
      <<<1024, 256, 0, mil::cuda::current_stream()>>>(t.data(), t.numel(), seed, lo, hi);
  MIL_CUDA_CHECK_LAUNCH("dpo_bench_fill_kernel");
  return t;
}

// The batch layout: targets (prompt rows ignored), offsets and reference log-probabilities.
struct Layout {
  Tensor<int32_t, Cuda> targets;
  std::vector<int64_t> offsets{0};
  std::vector<double> ref;
};
Layout batch_layout() {
  Layout l;
  std::vector<int32_t> targets;
  for (int64_t s = 0; s < 2 * kPairs; ++s) {
    targets.insert(targets.end(), size_t(kPrompt), -100);
    for (int64_t i = 0; i < kAnswer; ++i)
      targets.push_back(int32_t(int64_t(targets.size()) * 7919 % kVocab));
    l.offsets.push_back(int64_t(targets.size()));
    l.ref.push_back(-double(kAnswer) * 11.0 + double(s % 3));
  }
  l.targets = Tensor<int32_t, Cuda>::from(Shape{kRows}, targets);
  return l;
}

const ag::DpoLossConfig kConfig{0.1, 0.0, DpoObjective::sigmoid, -100};

void BM_dpo_loss_gpu_bf16_fwd_bwd(benchmark::State& state) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  {
    ag::Var<bf16, Cuda> logits(random_tensor<bf16>(Shape{kRows, kVocab}, 1, -8.f, 8.f), true);
    const Layout layout = batch_layout();
    ag::Tape tape;
    bench::time_cuda(state, [&](int) {
      logits.release_grad();
      (void)ag::dpo_loss(tape, logits, layout.targets, layout.offsets, layout.ref, kConfig);
      tape.backward();
    });
    // Bytes: the floor's one read and one write. ~5 FLOPs per logit and pass, three passes.
    const double elements = double(kRows) * double(kVocab);
    bench::report(state, 2.0 * sizeof(bf16) * elements, 15.0 * elements, bench::h100_bf16,
                  kTorchEagerSeconds);
  }
  mil::cuda::CachingAllocator::instance().release_cached();  // the next case starts clean
}
BENCHMARK(BM_dpo_loss_gpu_bf16_fwd_bwd)->UseManualTime()->Unit(benchmark::kMillisecond);

// state.range(0): chunk rows, 0 for the unchunked form.
void BM_dpo_loss_lm_head_gpu_bf16(benchmark::State& state) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t chunk = state.range(0);
  auto& allocator = mil::cuda::CachingAllocator::instance();
  {
    ag::Var<bf16, Cuda> hidden(random_tensor<bf16>(Shape{kRows, kHidden}, 3, -1.f, 1.f), true);
    ag::Var<bf16, Cuda> head(random_tensor<bf16>(Shape{kVocab, kHidden}, 4, -0.1f, 0.1f), true);
    const Layout layout = batch_layout();
    ag::Tape tape;
    auto step = [&] {
      hidden.release_grad();
      head.release_grad();
      if (chunk > 0) {
        (void)ag::dpo_loss_lm_head(tape, hidden, head, layout.targets, layout.offsets, layout.ref,
                                   kConfig, chunk);
      } else {
        auto logits = ag::linear(tape, hidden, head);
        (void)ag::dpo_loss(tape, logits, layout.targets, layout.offsets, layout.ref, kConfig);
      }
      tape.backward();
    };
    bench::time_cuda_step(state, step);
    // Bytes: the logits read and their gradient written once; FLOPs: the three head products.
    const double elements = double(kRows) * double(kVocab);
    bench::report(state, 2.0 * sizeof(bf16) * elements, 3 * 2.0 * elements * double(kHidden),
                  bench::h100_bf16);
  }
  allocator.release_cached();
}
BENCHMARK(BM_dpo_loss_lm_head_gpu_bf16)
    ->Arg(0)
    ->Arg(1024)
    ->Arg(2048)
    ->ArgName("chunk")
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
