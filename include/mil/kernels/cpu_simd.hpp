#pragma once
// What the CPU kernels' SIMD paths share: the x86 target attributes (the project builds without
// -mavx512f, and a user's build may have no -mavx2 at all, so each SIMD function names its own
// ISA and runs only where the CPU reports it), the run-time checks, and the 16-lane summation
// tree of the row-invariant products.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))  // _mm_cvtsi64_si128 is 64-bit only
#define MIL_CPU_SIMD 1
#include <cpuid.h>
#include <immintrin.h>
#define MIL_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define MIL_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
#define MIL_TARGET_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#else
#define MIL_CPU_SIMD 0
#endif
// Unrolls a host loop over a tile's rows (GCC's pragma; nvcc's front end does not know it and
// would warn in every CUDA translation unit that includes the CPU kernels).
#if defined(__CUDACC__)
#define MIL_CPU_UNROLL_8
#else
#define MIL_CPU_UNROLL_8 _Pragma("GCC unroll 8")
#endif

namespace mil::cpu {

// Whether this CPU (and build) runs MIL_TARGET_AVX2 code: AVX2, FMA and F16C.
inline bool cpu_has_avx2() {
#if MIL_CPU_SIMD
  static const bool ok = [] {
    __builtin_cpu_init();
    // F16C by CPUID (leaf 1, ECX bit 29): Clang before 18 rejects __builtin_cpu_supports("f16c").
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  }();
  return ok;
#else
  return false;
#endif
}

// Whether it runs MIL_TARGET_AVX512 code: AVX-512F besides the above. (The project builds with
// -mno-avx512f under GCC 12 for a vectoriser bug in code it writes itself; these functions are
// written with intrinsics, and a test holds their bits to the AVX2 path's on every CPU that runs
// them.)
inline bool cpu_has_avx512() {
#if MIL_CPU_SIMD
  static const bool ok = cpu_has_avx2() && __builtin_cpu_supports("avx512f");
  return ok;
#else
  return false;
#endif
}

// Whether it runs MIL_TARGET_AVX512_VNNI code: AVX-512 BW, VL and VNNI (8-bit dot products)
// besides the above.
inline bool cpu_has_avx512_vnni() {
#if MIL_CPU_SIMD
  static const bool ok = cpu_has_avx512() && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return ok;
#else
  return false;
#endif
}

#if MIL_CPU_SIMD
// 16 lanes (lo: lanes 0-7, hi: 8-15) summed in the tree lane l += lane l + w for w = 8, 4, 2, 1.
MIL_TARGET_AVX2 inline float avx2_sum_lanes(__m256 lo, __m256 hi) {
  const __m256 s8 = _mm256_add_ps(lo, hi);                                                 // l + 8
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));        // l + 4
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));                                              // l + 2
  s4 = _mm_add_ss(s4, _mm_shuffle_ps(s4, s4, 1));                                          // l + 1
  return _mm_cvtss_f32(s4);
}
#endif

}  // namespace mil::cpu
