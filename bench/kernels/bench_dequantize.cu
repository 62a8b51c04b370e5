// GPU dequantisation of a SmolLM2-sized weight (49152 x 576, the token embedding) from the GGUF
// types mil reads into bf16. Floor: the quantised bytes read plus the bf16 bytes written.
#include <benchmark/benchmark.h>

#include <mil/core/tensor.hpp>
#include <mil/io/dequantize.cuh>

#include "common/bench.hpp"
#include "common/cuda_timer.cuh"

using namespace mil;

namespace {

void BM_dequantize_bf16(benchmark::State& state) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const auto type = io::GgmlType(state.range(0));
  const int64_t n = 49152 * 576;
  const auto info = io::check_dequantize(type, n);
  const int64_t bytes = n / info.block_size * info.block_bytes;
  // Zero bytes decode to finite values in every format; the speed does not depend on them.
  auto src = Tensor<int32_t, Cuda>::zeros(Shape{(bytes + 3) / 4});
  auto dst = Tensor<bf16, Cuda>::empty(Shape{n});
  const auto* raw = reinterpret_cast<const uint8_t*>(src.data());
  bench::time_cuda(state, [&](int) {
    mil::cuda::dequantize<bf16>(type, raw, dst.data(), n, mil::cuda::current_stream());
  });
  state.SetLabel(std::string(info.name));
  bench::report(state, double(bytes) + 2.0 * double(n), 0, bench::h100_bf16);
}

}  // namespace

BENCHMARK(BM_dequantize_bf16)
    ->ArgName("ggml_type")
    ->Arg(int(io::GgmlType::F16))
    ->Arg(int(io::GgmlType::Q8_0))
    ->Arg(int(io::GgmlType::Q4_1))
    ->Arg(int(io::GgmlType::Q4_K))
    ->Arg(int(io::GgmlType::Q6_K))
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
