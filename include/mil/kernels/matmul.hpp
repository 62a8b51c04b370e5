#pragma once
// Matrix product C = alpha op(A) op(B) + beta C, row-major and strided-batched: the CPU reference
// (Eigen products over row-major maps). The CUDA version (matmul.cuh) calls cuBLASLt.
//
// Backward of C = alpha op(A) op(B), as matmul calls (beta = 1 accumulates into a gradient):
//   dA (m,k)       = alpha dC op(B)^T   : {m, k, n, false, !trans_b}   (dC, B)
//   dA stored (k,m) = alpha op(B) dC^T  : {k, m, n, trans_b, true}     (B, dC)
//   dB (k,n)       = alpha op(A)^T dC   : {k, n, m, !trans_a, false}   (A, dC)
//   dB stored (n,k) = alpha dC^T op(A)  : {n, k, m, true, trans_a}     (dC, A)
// tests/kernels/test_matmul.cpp checks these against central differences.
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)  // Eigen's defaulted __host__ __device__ members warn under nvcc
#pragma nv_diag_suppress 20012
#include <Eigen/Dense>
#pragma nv_diag_default 20012
#else
#include <Eigen/Dense>
#endif

#include "../core/error.hpp"
#include "linear_rows.hpp"  // the inference product beside it

namespace mil {

struct GemmShape {
  int64_t m, n, k;       // C is (m, n); the reduction runs over k
  bool trans_a = false;  // A stored (k, m) instead of (m, k)
  bool trans_b = false;  // B stored (n, k) instead of (k, n)
  int64_t batch = 1;     // matrices per operand, contiguous: strides m*k, k*n, m*n
  float alpha = 1, beta = 0;
};

// Throws unless the sizes are non-negative, batch >= 1 and every operand's element count fits.
inline void check_gemm_shape(const GemmShape& s) {
  MIL_CHECK(s.m >= 0 && s.n >= 0 && s.k >= 0, "matmul: negative size m=", s.m, " n=", s.n,
            " k=", s.k);
  MIL_CHECK(s.batch >= 1, "matmul: batch must be >= 1, got ", s.batch);
  (void)checked_mul(checked_mul(s.m, s.k), s.batch);
  (void)checked_mul(checked_mul(s.k, s.n), s.batch);
  (void)checked_mul(checked_mul(s.m, s.n), s.batch);
}

namespace cpu {

// beta == 0 never reads C (it may hold NaN poison). C must not overlap A or B.
template <class T>
void matmul(const GemmShape& s, T* c, const T* a, const T* b) {
  static_assert(std::is_floating_point_v<T>, "cpu::matmul runs in float or double");
  check_gemm_shape(s);
  if (s.m == 0 || s.n == 0) return;
  MIL_CHECK(c != nullptr && (s.k == 0 || (a != nullptr && b != nullptr)),
            "matmul: null operand pointer");
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using In = Eigen::Map<const Matrix>;
  using Out = Eigen::Map<Matrix>;
  const T alpha = T(s.alpha), beta = T(s.beta);
  for (int64_t i = 0; i < s.batch; ++i) {
    Out C(c + i * s.m * s.n, s.m, s.n);
    if (s.k == 0) {  // empty product: C = beta C
      if (beta == T(0))
        C.setZero();
      else
        C *= beta;
      continue;
    }
    In A(a + i * s.m * s.k, s.trans_a ? s.k : s.m, s.trans_a ? s.m : s.k);
    In B(b + i * s.k * s.n, s.trans_b ? s.n : s.k, s.trans_b ? s.k : s.n);
    auto product = [&](const auto& op_a, const auto& op_b) {
      if (beta == T(0)) {
        C.noalias() = alpha * (op_a * op_b);  // assigns, never reads C
      } else {
        C *= beta;
        C.noalias() += alpha * (op_a * op_b);
      }
    };
    if (!s.trans_a && !s.trans_b)
      product(A, B);
    else if (s.trans_a && !s.trans_b)
      product(A.transpose(), B);
    else if (!s.trans_a && s.trans_b)
      product(A, B.transpose());
    else
      product(A.transpose(), B.transpose());
  }
}

}  // namespace cpu
}  // namespace mil
