#pragma once
// ggml dequantisation on the GPU: raw tensor bytes uploaded as they are in the file become float or
// bf16 weights on the device, 3-5x fewer bytes over PCIe than float. Each thread decodes whole
// blocks with the same host-device block decoders as the CPU (dequantize.hpp), so both read the
// formats identically; only the rounding of a * b + c may differ (the GPU fuses it).
#include <cstdint>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_vec.cuh"
#include "dequantize.hpp"

namespace mil::cuda {
namespace dequant_detail {

template <class T>
__global__ void dequantize_kernel(io::GgmlType type, const uint8_t* src, T* dst, int64_t units,
                                  int block_size, int block_bytes) {
  for (int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; u < units;
       u += int64_t(gridDim.x) * blockDim.x) {
    switch (type) {
      case io::GgmlType::F32: {
        float v;
        memcpy(&v, src + 4 * u, 4);
        dst[u] = from_float<T>(v);
        break;
      }
      case io::GgmlType::F16: dst[u] = from_float<T>(io::detail::load_f16(src + 2 * u)); break;
      case io::GgmlType::BF16: dst[u] = from_float<T>(io::detail::load_bf16(src + 2 * u)); break;
      default: {
        float y[256];
        io::detail::dequantize_block(type, src + u * block_bytes, y);
        for (int j = 0; j < block_size; ++j) dst[u * block_size + j] = from_float<T>(y[j]);
      }
    }
  }
}

}  // namespace dequant_detail

// dst[0..n) (device, float or bf16) = the n elements stored at src (device bytes) in `type`.
template <class T>
void dequantize(io::GgmlType type, const uint8_t* src, T* dst, int64_t n, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "dequantize: float or bf16");
  const auto info = io::check_dequantize(type, n);
  if (n == 0) return;
  const int64_t units = n / info.block_size;  // F32/F16/BF16: blocks of one element
  const int threads = 128;
  const int64_t blocks = std::min<int64_t>((units + threads - 1) / threads, 65536);
  dequant_detail::dequantize_kernel<T><<<unsigned(blocks), threads, 0, stream>>>(
      type, src, dst, units, int(info.block_size), int(info.block_bytes));
  MIL_CUDA_CHECK_LAUNCH("dequantize_kernel");
}

}  // namespace mil::cuda
