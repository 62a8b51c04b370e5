#pragma once
// Matrix product on the GPU through cuBLASLt: C = alpha op(A) op(B) + beta C, row-major,
// strided-batched, for float (true fp32, no TF32) and bf16 (fp32 accumulation). Semantics and the
// backward formulas are in matmul.hpp.
//
// Row-major C (m,n) is column-major C^T (n,m) = op(B)^T op(A)^T, and a row-major buffer read as
// column-major is its transpose; so cuBLASLt gets our B as its A, our A as its B, the transpose
// flags unchanged, and m and n swapped. Each thread keeps one cuBLASLt handle, a 32 MiB workspace
// per (device, stream) and the descriptors plus heuristic choice per problem, so a repeated shape
// costs one hash lookup and the matmul call.
//
// Where cuBLASLt has no algorithm for a problem (it has refused some mixes of operand alignments),
// the same product runs through cuBLAS's cublasGemmStridedBatchedEx, same types and accumulation;
// the plan remembers that, so the choice is made once per shape. Products of at most 8 rows
// against a transposed weight (decode steps) go to matmul_skinny.cuh instead.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include "../core/allocator.hpp"
#include "../core/cuda_check.hpp"
#include "../core/dtype.hpp"
#include "matmul.hpp"
#include "matmul_skinny.cuh"

#if !MIL_CUDA_ENABLED
#error "mil/kernels/matmul.cuh needs a CUDA build (MIL_CUDA_ENABLED=1)"
#endif

namespace mil::cuda {

inline constexpr size_t blas_lt_workspace_bytes = size_t(32) << 20;

namespace detail {

// Everything the descriptors and the heuristic choice depend on.
struct GemmPlanKey {
  int64_t m, n, k, batch;
  int device;
  cudaDataType_t type;
  bool trans_a, trans_b;
  uint32_t align_a, align_b, align_c;  // bytes, powers of two up to 256
  bool operator==(const GemmPlanKey&) const = default;
};

struct GemmPlanKeyHash {
  size_t operator()(const GemmPlanKey& key) const {
    uint64_t h = 0x9E3779B97F4A7C15ull;
    auto mix = [&h](uint64_t v) { h = (h ^ v) * 0x100000001B3ull + (h >> 29); };
    mix(uint64_t(key.m));
    mix(uint64_t(key.n));
    mix(uint64_t(key.k));
    mix(uint64_t(key.batch));
    mix(uint64_t(key.device) << 8 | uint64_t(key.type));
    mix(uint64_t(key.trans_a) | uint64_t(key.trans_b) << 1);
    mix(uint64_t(key.align_a) | uint64_t(key.align_b) << 16 | uint64_t(key.align_c) << 32);
    return size_t(h);
  }
};

struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // cuBLASLt's A, B and C = D
  cublasLtMatmulAlgo_t algo{};
  size_t workspace_bytes = 0;
  bool use_cublas = false;  // cuBLASLt cannot run this problem: cublasGemmStridedBatchedEx does

  GemmPlan() = default;
  GemmPlan(const GemmPlan&) = delete;
  GemmPlan& operator=(const GemmPlan&) = delete;
  ~GemmPlan() {  // statuses ignored: may run at thread exit
    if (c) (void)cublasLtMatrixLayoutDestroy(c);
    if (b) (void)cublasLtMatrixLayoutDestroy(b);
    if (a) (void)cublasLtMatrixLayoutDestroy(a);
    if (op) (void)cublasLtMatmulDescDestroy(op);
  }
};

struct BlasLtThreadState {
  cublasLtHandle_t handle = nullptr;
  cublasHandle_t fallback = nullptr;  // created only if some problem needs it
  bool force_fallback = false;        // tests: run every new plan through cuBLAS
  std::unordered_map<GemmPlanKey, std::unique_ptr<GemmPlan>, GemmPlanKeyHash> plans;
  // Matmuls on one stream run in order, so one workspace per (device, stream) is never shared
  // by two kernels at once.
  std::map<std::pair<int, uintptr_t>, void*> workspaces;

  BlasLtThreadState() = default;
  BlasLtThreadState(const BlasLtThreadState&) = delete;
  BlasLtThreadState& operator=(const BlasLtThreadState&) = delete;
  ~BlasLtThreadState() {
    plans.clear();
    for (auto& [key, p] : workspaces) CachingAllocator::instance().deallocate(p);
    if (fallback) (void)cublasDestroy(fallback);
    if (handle) (void)cublasLtDestroy(handle);
  }
};

inline BlasLtThreadState& blas_lt_state() {
  thread_local BlasLtThreadState state;
  return state;
}

// Plans for distinct shapes pile up only with many sequence lengths; past this the cache restarts.
inline constexpr size_t max_gemm_plans = 1024;

template <class T>
inline constexpr cudaDataType_t blas_type = CUDA_R_32F;
template <>
inline constexpr cudaDataType_t blas_type<bf16> = CUDA_R_16BF;

// Largest power of two up to 256 dividing the address and, when batched, the batch stride in
// bytes: every matrix of the batch starts at least that aligned.
inline uint32_t operand_alignment(const void* p, int64_t stride_bytes, int64_t batch) {
  uint64_t bits = uint64_t(reinterpret_cast<uintptr_t>(p)) | 256u;
  if (batch > 1) bits |= uint64_t(stride_bytes);
  return uint32_t(bits & (~bits + 1));  // lowest set bit
}

// For calls where CUBLAS_STATUS_NOT_SUPPORTED is an answer, not an error.
inline void check_blas_status(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS)
    MIL_FAIL("cuBLAS call failed: ", call, ": ", cublasGetStatusName(status), " (",
             cublasGetStatusString(status), ")");
}

inline void make_layout(cublasLtMatrixLayout_t* layout, cudaDataType_t type, int64_t rows,
                        int64_t cols, int64_t batch, int64_t stride) {
  MIL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(layout, type, uint64_t(rows), uint64_t(cols), rows));
  if (batch > 1) {
    int32_t count = int32_t(batch);
    MIL_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                      &count, sizeof(count)));
    MIL_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
        *layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
}

struct PreferenceGuard {
  cublasLtMatmulPreference_t pref = nullptr;
  ~PreferenceGuard() {
    if (pref) (void)cublasLtMatmulPreferenceDestroy(pref);
  }
};

inline GemmPlan& gemm_plan(cublasLtHandle_t handle, const GemmPlanKey& key) {
  auto& plans = blas_lt_state().plans;
  if (auto it = plans.find(key); it != plans.end()) return *it->second;
  if (plans.size() >= max_gemm_plans) plans.clear();

  auto plan = std::make_unique<GemmPlan>();
  MIL_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  int32_t op_a = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
  int32_t op_b = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  MIL_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  MIL_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  // Stored (column-major) shapes: our B is (n,k), or (k,n) when trans_b; our A is (k,m), or (m,k)
  // when trans_a; C is (n,m). Leading dimensions are the stored row counts (dense storage).
  make_layout(&plan->a, key.type, key.trans_b ? key.k : key.n, key.trans_b ? key.n : key.k,
              key.batch, key.k * key.n);
  make_layout(&plan->b, key.type, key.trans_a ? key.m : key.k, key.trans_a ? key.k : key.m,
              key.batch, key.m * key.k);
  make_layout(&plan->c, key.type, key.n, key.m, key.batch, key.m * key.n);

  PreferenceGuard guard;
  MIL_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&guard.pref));
  auto set_pref = [&](cublasLtMatmulPreferenceAttributes_t attr, const auto& value) {
    MIL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(guard.pref, attr, &value, sizeof(value)));
  };
  set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(blas_lt_workspace_bytes));
  // Split-K only with fp32 partials reduced in a fixed order (no split-K is always allowed): the
  // in-place and output-type schemes add partials in the output type, i.e. rounded to bf16.
  set_pref(CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
           uint32_t(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE));
  // Operands may be slices (fused QKV, batch offsets): only algorithms that accept their actual
  // alignment are eligible (the default assumes 256 bytes).
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_b);
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a);
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c);
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c);

  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (!blas_lt_state().force_fallback) {
    cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        handle, plan->op, plan->a, plan->b, plan->c, plan->c, guard.pref, 1, &result, &found);
    if (status == CUBLAS_STATUS_NOT_SUPPORTED)
      found = 0;
    else
      check_blas_status(status, "cublasLtMatmulAlgoGetHeuristic");
  }
  plan->use_cublas = found == 0;
  plan->algo = result.algo;
  plan->workspace_bytes = found ? result.workspaceSize : 0;
  return *plans.emplace(key, std::move(plan)).first->second;
}

inline void* blas_lt_workspace(int device, cudaStream_t stream) {
  void*& p = blas_lt_state().workspaces[{device, reinterpret_cast<uintptr_t>(stream)}];
  if (!p) p = CachingAllocator::instance().allocate(blas_lt_workspace_bytes, stream);
  return p;
}

// The same product through cuBLAS (column-major, operands swapped as for cuBLASLt).
template <class T>
void cublas_fallback_gemm(const GemmShape& s, T* c, const T* a, const T* b, int device,
                          cudaStream_t stream) {
  auto& state = blas_lt_state();
  if (!state.fallback) MIL_CUBLAS_CHECK(cublasCreate(&state.fallback));
  MIL_CUBLAS_CHECK(cublasSetStream(state.fallback, stream));
  MIL_CUBLAS_CHECK(cublasSetWorkspace(state.fallback, blas_lt_workspace(device, stream),
                                      blas_lt_workspace_bytes));
  const float alpha = s.alpha, beta = s.beta;
  constexpr cudaDataType_t type = blas_type<T>;
  MIL_CUBLAS_CHECK(cublasGemmStridedBatchedEx_64(
      state.fallback, s.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, s.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
      s.n, s.m, s.k, &alpha, b, type, s.trans_b ? s.k : s.n, s.k * s.n, a, type,
      s.trans_a ? s.m : s.k, s.m * s.k, &beta, c, type, s.n, s.m * s.n, s.batch, CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT));
}

// Tests: while on, new plans skip cuBLASLt so the cuBLAS path can be checked; clears the cache.
inline void force_cublas_fallback(bool on) {
  auto& state = blas_lt_state();
  state.force_fallback = on;
  state.plans.clear();
}

template <class T>
__global__ void gemm_scale_kernel(T* c, int64_t count, float beta) {
  int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride)
    c[i] = T(beta * float(c[i]));
}

}  // namespace detail

// This thread's cuBLASLt handle, created on first use.
inline cublasLtHandle_t blas_lt_handle() {
  auto& state = detail::blas_lt_state();
  if (!state.handle) MIL_CUBLAS_CHECK(cublasLtCreate(&state.handle));
  return state.handle;
}

// beta == 0 never reads C. C may equal neither A nor B. Pointers need only element alignment.
template <class T>
void matmul(const GemmShape& s, T* c, const T* a, const T* b, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "cuda::matmul runs in float or bf16");
  check_gemm_shape(s);
  if (s.m == 0 || s.n == 0) return;
  MIL_CHECK(c != nullptr && (s.k == 0 || (a != nullptr && b != nullptr)),
            "matmul: null operand pointer");
  const int64_t count = s.m * s.n * s.batch;
  if (s.k == 0) {  // empty product: C = beta C (cuBLASLt wants k >= 1)
    if (s.beta == 0.f) {
      MIL_CUDA_CHECK(cudaMemsetAsync(c, 0, size_t(count) * sizeof(T), stream));
    } else {
      int blocks = int(std::min<int64_t>((count + 255) / 256, 4096));
      detail::gemm_scale_kernel<T><<<blocks, 256, 0, stream>>>(c, count, s.beta);
      MIL_CUDA_CHECK_LAUNCH("gemm_scale_kernel");
    }
    return;
  }
  // Decode-sized products (a few rows against a weight) stream the weight at full bandwidth.
  if (matmul_skinny_fits(s, c, a, b)) return matmul_skinny(s, c, a, b, stream);
  MIL_CHECK(s.batch <= std::numeric_limits<int32_t>::max(), "matmul: batch ", s.batch,
            " exceeds cuBLASLt's int32 batch count");

  detail::GemmPlanKey key{};
  key.m = s.m;
  key.n = s.n;
  key.k = s.k;
  key.batch = s.batch;
  MIL_CUDA_CHECK(cudaGetDevice(&key.device));
  key.type = detail::blas_type<T>;
  key.trans_a = s.trans_a;
  key.trans_b = s.trans_b;
  const int64_t elem = int64_t(sizeof(T));
  key.align_a = detail::operand_alignment(a, s.m * s.k * elem, s.batch);
  key.align_b = detail::operand_alignment(b, s.k * s.n * elem, s.batch);
  key.align_c = detail::operand_alignment(c, s.m * s.n * elem, s.batch);

  cublasLtHandle_t handle = blas_lt_handle();
  detail::GemmPlan& plan = detail::gemm_plan(handle, key);
  if (!plan.use_cublas) {
    void* workspace =
        plan.workspace_bytes ? detail::blas_lt_workspace(key.device, stream) : nullptr;
    const float alpha = s.alpha, beta = s.beta;
    cublasStatus_t status =
        cublasLtMatmul(handle, plan.op, &alpha, b, plan.a, a, plan.b, &beta, c, plan.c, c, plan.c,
                       &plan.algo, workspace, plan.workspace_bytes, stream);
    if (status != CUBLAS_STATUS_NOT_SUPPORTED) {
      detail::check_blas_status(status, "cublasLtMatmul");
      return;
    }
    plan.use_cublas = true;  // refused before launching anything: cuBLAS from now on
  }
  detail::cublas_fallback_gemm(s, c, a, b, key.device, stream);
}

// The inference product of cpu::linear_rows: y = x W^T (+ y when accumulate), W [out, in]. W is
// an inference weight: no kernel still in flight on the stream writes it (a few rows read it
// before waiting for the previous kernel, matmul_skinny.cuh).
template <class T>
void linear_rows(T* y, const T* x, const T* w, int64_t rows, int64_t out, int64_t in,
                 bool accumulate, cudaStream_t stream) {
  GemmShape s{rows, out, in, false, true};
  s.beta = accumulate ? 1.f : 0.f;
  if (matmul_skinny_fits(s, y, x, w)) return matmul_skinny(s, y, x, w, stream, true);
  matmul(s, y, x, w, stream);
}

}  // namespace mil::cuda
