#pragma once
// Threads of the CPU path. One OpenMP pool serves Eigen's products and mil's own loops, so the
// two never oversubscribe the cores; set_threads() sizes it (the programs' --threads).
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "error.hpp"

namespace mil::cpu {

// Threads the CPU kernels use (1 without OpenMP).
inline int threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline void set_threads(int n) {
  MIL_CHECK(n >= 1, "set_threads: ", n, " threads");
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
}

}  // namespace mil::cpu
