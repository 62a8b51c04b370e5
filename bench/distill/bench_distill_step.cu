// Distillation steps on the GPU (bf16 weights, fp32 masters): stage 1 of the 50% hybrid of
// SmolLM2-135M at 16 x 1024, against the reference stack (HF Llama teacher + MambaInLlama Mamba-2
// layers with mamba_ssm's Triton SSD kernels, PyTorch depthwise conv): 77.1k tokens/s on the lent
// H100 80GB HBM3 on 2026-12-05, in the session of mil's 190.6k (65k on 2026-11-22;
// docs/PERFORMANCE.md); target 3x. Stage 2 beside it.
#include "distill/distill_step.hpp"

#include "common/cuda_timer.cuh"

namespace {

constexpr double kReferenceStage1TokensPerS = 77.1e3;

template <mil::distill::Stage S>
void BM_distill_step_cuda(benchmark::State& state) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  mil::bench::distill_step<mil::bf16, mil::Cuda>(
      state, S, mil::bench::h100_bf16, S == mil::distill::Stage::distill ? kReferenceStage1TokensPerS : 0,
      [&](const auto& step) { mil::bench::time_cuda(state, [&](int) { step(); }, 2); });
  mil::cuda::CachingAllocator::instance().release_cached();
}

}  // namespace

BENCHMARK(BM_distill_step_cuda<mil::distill::Stage::distill>)->Name("BM_distill_stage1_cuda")->Args({16, 1024})->Unit(benchmark::kMillisecond)->UseManualTime();
BENCHMARK(BM_distill_step_cuda<mil::distill::Stage::sft>)->Name("BM_distill_stage2_cuda")->Args({16, 1024})->Unit(benchmark::kMillisecond)->UseManualTime();
