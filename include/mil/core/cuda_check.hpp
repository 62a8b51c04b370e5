#pragma once
// Checked CUDA runtime and cuBLAS calls: a failure throws mil::Error naming the call, the error
// and where it happened. Only available when mil is built with CUDA.
#include "config.hpp"
#include "error.hpp"

#if MIL_CUDA_ENABLED
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#define MIL_CUDA_CHECK(call)                                                               \
  do {                                                                                     \
    cudaError_t mil_err_ = (call);                                                         \
    if (mil_err_ != cudaSuccess)                                                           \
      MIL_FAIL("CUDA call failed: ", #call, ": ", cudaGetErrorName(mil_err_), " (",        \
               cudaGetErrorString(mil_err_), ")");                                         \
  } while (0)

// After a kernel launch: catches bad launch configurations at once (not asynchronous faults).
#define MIL_CUDA_CHECK_LAUNCH(name)                                                        \
  do {                                                                                     \
    cudaError_t mil_err_ = cudaGetLastError();                                             \
    if (mil_err_ != cudaSuccess)                                                           \
      MIL_FAIL("CUDA kernel launch failed: ", name, ": ", cudaGetErrorString(mil_err_));   \
  } while (0)

#define MIL_CUBLAS_CHECK(call)                                                             \
  do {                                                                                     \
    cublasStatus_t mil_st_ = (call);                                                       \
    if (mil_st_ != CUBLAS_STATUS_SUCCESS)                                                  \
      MIL_FAIL("cuBLAS call failed: ", #call, ": ", cublasGetStatusName(mil_st_), " (",    \
               cublasGetStatusString(mil_st_), ")");                                       \
  } while (0)

namespace mil::cuda {

// Number of usable CUDA devices; 0 (never an exception) when there is no driver or no GPU.
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace mil::cuda
#else
namespace mil::cuda {
inline int device_count() { return 0; }
}  // namespace mil::cuda
#endif
