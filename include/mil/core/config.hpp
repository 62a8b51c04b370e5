#pragma once
// Compiler portability: core headers build as plain C++ without nvcc (CuTe's config.hpp idea).
#if defined(__CUDACC__)
#define MIL_HOST_DEVICE __host__ __device__
#define MIL_DEVICE __device__
#else
#define MIL_HOST_DEVICE
#define MIL_DEVICE
#endif
#define MIL_FORCEINLINE inline __attribute__((always_inline))

// MIL_CUDA_ENABLED is set by the CMake target when the CUDA toolkit is in use, so plain C++
// translation units can still create Tensor<T, Cuda> and copy to and from the GPU.
#ifndef MIL_CUDA_ENABLED
#define MIL_CUDA_ENABLED 0
#endif

#define MIL_VERSION_MAJOR 0
#define MIL_VERSION_MINOR 1
#define MIL_VERSION_PATCH 0
