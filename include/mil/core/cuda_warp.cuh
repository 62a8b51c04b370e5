#pragma once
// Warp-level reductions shared by the kernels.
#include "config.hpp"
#if !MIL_CUDA_ENABLED
#error "mil/core/cuda_warp.cuh needs a CUDA build: compile with nvcc and -DMIL_CUDA_ENABLED=1"
#endif

namespace mil::cuda {

// The sum over the 32 lanes, in every lane, by a butterfly of xor shuffles: the same order of
// additions in every lane and every run. All lanes must call it.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

}  // namespace mil::cuda
