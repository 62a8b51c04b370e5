#pragma once
// Softmax cross-entropy forward + backward on the GPU, for float and bf16 logits (semantics and
// CPU reference in cross_entropy.hpp).
//
// One block per row, one pass over the logits. 16-byte loads feed an online max/sum in fp32 (each
// thread keeps a running max and the sum of exp(x - max); the block then combines them) and, when
// the gradient is wanted and the row fits, are also kept in shared memory: a 49152-wide bf16 row
// is 96 KB, two rows per H100 SM. The gradient pass reads that copy and writes the gradient once
// with 16-byte stores. A row too wide for shared memory is read from global memory a second time.
//
// row_scale, when given, multiplies row r's gradient by row_scale[r] (a device array).
//
// Targets are validated on the host by the autograd op. A kernel cannot throw, so here a target
// outside [0, vocab) other than ignore_index makes that row's loss and gradient NaN.
// dlogits is either logits itself (in place) or a buffer that does not overlap it.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_launch.hpp"
#include "../core/cuda_ptx.cuh"
#include "../core/cuda_vec.cuh"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/math.hpp"

namespace mil::cuda {
namespace cross_entropy_detail {

constexpr int kMaxThreads = 512;  // two such blocks per SM fit in the registers at 64 each
constexpr int kUnroll = 4;        // 16-byte loads in flight per thread

// Running softmax normaliser: sum of exp(x - max) over the values seen.
struct MaxSum {
  float max, sum;
};
MIL_DEVICE inline MaxSum combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.f};  // nothing above -inf yet: avoid (-inf) - (-inf)
  return {m, a.sum * fast_exp2((a.max - m) * kLog2e) + b.sum * fast_exp2((b.max - m) * kLog2e)};
}
template <int N>
MIL_DEVICE inline void accumulate(MaxSum& acc, const float* x) {
  float m = acc.max;
#pragma unroll
  for (int i = 0; i < N; ++i) m = fmaxf(m, x[i]);  // NaN is skipped here but poisons the sum
  if (m == -INFINITY) return;
  float sum = acc.sum * fast_exp2((acc.max - m) * kLog2e);
#pragma unroll
  for (int i = 0; i < N; ++i) sum += fast_exp2((x[i] - m) * kLog2e);
  acc = {m, sum};
}
// Butterfly: every lane ends with the same bits (combine is commutative).
MIL_DEVICE inline MaxSum warp_combine(MaxSum v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    v = combine(v, {__shfl_xor_sync(0xffffffffu, v.max, offset),
                    __shfl_xor_sync(0xffffffffu, v.sum, offset)});
  return v;
}
// The block's combined value, in every thread. Contains the block's only barrier.
MIL_DEVICE inline MaxSum block_combine(MaxSum v) {
  __shared__ float warp_max[32], warp_sum[32];
  v = warp_combine(v);
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  if (lane == 0) {
    warp_max[warp] = v.max;
    warp_sum[warp] = v.sum;
  }
  __syncthreads();
  const int warps = int(blockDim.x / 32);
  v = lane < warps ? MaxSum{warp_max[lane], warp_sum[lane]} : MaxSum{-INFINITY, 0.f};
  return warp_combine(v);  // every warp reduces the same values the same way
}

// dloss * (softmax - onehot) of one element. Relative to the row's max, not its logsumexp: x - max
// is exact for nearby values, where max + log(sum) would be rounded to the logits' magnitude.
MIL_DEVICE inline float softmax_grad(float x, const MaxSum& total, float inv_sum, float scale,
                                     bool is_target) {
  const float p = fast_exp2((x - total.max) * kLog2e) * inv_sum;
  return scale * (is_target ? p - 1.f : p);
}

template <class T>
MIL_DEVICE inline void zero_row(T* y, int64_t n) {
  const VecSplit s = split16(y, n);
  if (threadIdx.x < s.scalars()) y[s.scalar_element(threadIdx.x)] = from_float<T>(0.f);
  uint4* yv = reinterpret_cast<uint4*>(y + s.head);
  for (int64_t k = threadIdx.x; k < s.nvec; k += blockDim.x) yv[k] = make_uint4(0, 0, 0, 0);
}

// Block b handles row b. kStaged: the row is kept in dynamic shared memory between the passes.
// vector_store: dlogits has the same alignment as logits, so the gradient goes out in the same
// 16-byte vectors the logits came in.
template <class T, bool kStaged>
__global__ void __launch_bounds__(kMaxThreads, 2)
    cross_entropy_kernel(float* __restrict__ losses, T* dlogits, const T* logits,
                         const int32_t* __restrict__ targets, int64_t vocab, float dloss,
                         const float* __restrict__ row_scale, int32_t ignore_index,
                         bool vector_store) {
  constexpr int V = kVec<T>;
  extern __shared__ uint4 stage_vectors[];
  const int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  T* dx = dlogits ? dlogits + row * vocab : nullptr;
  const int32_t target = targets[row];
  if (target == ignore_index) {  // the same for the whole block: no thread reaches the barrier
    if (threadIdx.x == 0) losses[row] = 0.f;
    if (dx) zero_row(dx, vocab);
    return;
  }
  const bool valid = target >= 0 && target < vocab;
  // Read before the barrier in block_combine, hence before any gradient is written over x.
  float target_logit = 0.f;
  if (threadIdx.x == 0) target_logit = valid ? to_float(x[target]) : NAN;

  const VecSplit s = split16(x, vocab);
  const uint4* xv = reinterpret_cast<const uint4*>(x + s.head);
  // Element j of the row lives at stage[j + shift], so the row's 16-byte vectors are 16-byte
  // aligned in shared memory as well (head + shift is 0 or V whenever nvec > 0).
  T* stage = reinterpret_cast<T*>(stage_vectors);
  uint4* sv = reinterpret_cast<uint4*>(stage + s.head + s.shift);

  // Pass 1: online max / sum over the row, keeping a copy when staged.
  MaxSum acc{-INFINITY, 0.f};
  if (threadIdx.x < s.scalars()) {
    const int64_t j = s.scalar_element(threadIdx.x);
    const T value = x[j];
    if constexpr (kStaged) stage[j + s.shift] = value;
    const float f = to_float(value);
    accumulate<1>(acc, &f);
  }
  for (int64_t base = threadIdx.x; base < s.nvec; base += kUnroll * blockDim.x) {
    uint4 r[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = base + int64_t(u) * blockDim.x;
      if (k < s.nvec) r[u] = kStaged ? __ldcs(xv + k) : xv[k];  // staged: read once, stream
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = base + int64_t(u) * blockDim.x;
      if (k < s.nvec) {
        if constexpr (kStaged) sv[k] = r[u];
        float f[V];
        unpack<T>(r[u], f);
        accumulate<V>(acc, f);
      }
    }
  }
  const MaxSum total = block_combine(acc);
  // NaN for an invalid target; max - x_t first, as it is exact for nearby values.
  if (threadIdx.x == 0) losses[row] = (total.max - target_logit) + logf(total.sum);
  if (!dx) return;

  // Pass 2: dloss * (softmax - onehot), written once.
  const float scale = valid ? dloss * (row_scale ? row_scale[row] : 1.f) : NAN;
  const float inv_sum = 1.f / total.sum;
  if (vector_store) {
    // Each thread revisits exactly the vectors and scalars it staged itself.
    uint4* dv = reinterpret_cast<uint4*>(dx + s.head);
    if (threadIdx.x < s.scalars()) {
      const int64_t j = s.scalar_element(threadIdx.x);
      const float value = to_float(kStaged ? stage[j + s.shift] : x[j]);
      dx[j] = from_float<T>(softmax_grad(value, total, inv_sum, scale, j == target));
    }
    for (int64_t base = threadIdx.x; base < s.nvec; base += kUnroll * blockDim.x) {
      uint4 r[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t k = base + int64_t(u) * blockDim.x;
        if (k < s.nvec) r[u] = kStaged ? sv[k] : xv[k];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t k = base + int64_t(u) * blockDim.x;
        if (k < s.nvec) {
          float f[V];
          unpack<T>(r[u], f);
          const int64_t first = s.head + k * V;
#pragma unroll
          for (int i = 0; i < V; ++i)
            f[i] = softmax_grad(f[i], total, inv_sum, scale, first + i == target);
          __stcs(dv + k, pack<T>(f));
        }
      }
    }
  } else {
    // dlogits is aligned differently from logits (and so is a separate buffer): element stores.
    // Staged elements written by other threads are visible after the barrier in block_combine.
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const float value = to_float(kStaged ? stage[j + s.shift] : x[j]);
      dx[j] = from_float<T>(softmax_grad(value, total, inv_sum, scale, j == target));
    }
  }
}

}  // namespace cross_entropy_detail

// losses: [rows] (float); logits, dlogits: [rows, vocab]; row_scale: [rows] or null; dlogits null
// computes the loss only, dlogits == logits computes the gradient in place. See cross_entropy.hpp
// for the formulas.
template <class T>
void cross_entropy_forward_backward(float* losses, std::type_identity_t<T>* dlogits,
                                    const T* logits, const int32_t* targets, int64_t rows,
                                    int64_t vocab, float dloss, int32_t ignore_index,
                                    const float* row_scale, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "cuda::cross_entropy_forward_backward runs in float or bf16");
  namespace d = cross_entropy_detail;
  MIL_CHECK(rows >= 0 && vocab > 0, "cross_entropy: bad sizes rows=", rows, " vocab=", vocab);
  MIL_CHECK(rows <= std::numeric_limits<int32_t>::max(), "cross_entropy: ", rows,
            " rows exceed the grid limit of one block per row");
  (void)checked_mul(rows, vocab);
  if (rows == 0) return;
  constexpr int V = kVec<T>;
  const int64_t vectors = (vocab + V - 1) / V;
  const int threads = int(std::clamp<int64_t>((vectors + 31) / 32 * 32, 32, d::kMaxThreads));
  const bool vector_store = dlogits == nullptr || reinterpret_cast<uintptr_t>(dlogits) % 16 ==
                                                      reinterpret_cast<uintptr_t>(logits) % 16;
  // The staged row: vocab elements plus up to V - 1 of alignment shift.
  const size_t stage_bytes = size_t(((vocab + V) * int64_t(sizeof(T)) + 15) / 16 * 16);
  auto staged_kernel = d::cross_entropy_kernel<T, true>;
  const bool staged = dlogits != nullptr && opt_in_shared_memory(staged_kernel, stage_bytes);
  const dim3 grid{unsigned(rows)};
  if (staged)
    staged_kernel<<<grid, threads, stage_bytes, stream>>>(
        losses, dlogits, logits, targets, vocab, dloss, row_scale, ignore_index, vector_store);
  else
    d::cross_entropy_kernel<T, false><<<grid, threads, 0, stream>>>(
        losses, dlogits, logits, targets, vocab, dloss, row_scale, ignore_index, vector_store);
  MIL_CUDA_CHECK_LAUNCH("cross_entropy_kernel");
}

// Every row at the same scale dloss.
template <class T>
void cross_entropy_forward_backward(float* losses, std::type_identity_t<T>* dlogits,
                                    const T* logits, const int32_t* targets, int64_t rows,
                                    int64_t vocab, float dloss, int32_t ignore_index,
                                    cudaStream_t stream) {
  cross_entropy_forward_backward<T>(losses, dlogits, logits, targets, rows, vocab, dloss,
                                    ignore_index, nullptr, stream);
}

}  // namespace mil::cuda
