#pragma once
// Distillation loss (cross-entropy + KL at a temperature) forward + backward on the GPU, for float
// and bf16 logits (semantics and CPU reference in distill_loss.hpp).
//
// One block per row. Pass 1 reads the student and teacher rows once with 16-byte loads and keeps,
// per thread and then per block, online statistics in fp32: the student's max with its sums of
// exp(s - max) and exp((s - max) / tau), the teacher's max with its sum of exp((t - max) / tau),
// and W, the sum of those teacher terms times (t - s). When the gradient is wanted and both rows
// fit, they are also kept in shared memory (2 x 96 KB for a 49152-wide bf16 row: one block per
// SM), so pass 2 reads them from there and writes the gradient once with 16-byte stores: the row
// costs one read of s and t and one write of ds. Rows too wide are read from global memory again.
// At tau = 1 the two student sums coincide and one exponential per element is saved in each pass.
//
// Labels are validated on the host by the autograd op. A kernel cannot throw, so here a label
// outside [0, vocab) other than ignore_index makes that row's losses and gradient NaN. Logits must
// be finite. dstudent is either student itself (in place) or a buffer that does not overlap it.
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
#include "cross_entropy.cuh"  // cross_entropy_detail::zero_row
#include "distill_loss.hpp"

namespace mil::cuda {
namespace distill_loss_detail {

constexpr int kMaxThreads = 1024;  // a staged row pair fills an SM's shared memory: one block
constexpr int kUnroll = 2;         // 16-byte loads of each row in flight per thread

// Online statistics of a row (or of the part of it one thread has seen).
struct RowStats {
  float s_max, z1, zs;  // student: max, sum exp(s - max), sum exp((s - max) / tau)
  float t_max, zt, w;   // teacher: max, sum exp((t - max) / tau), sum of those terms (t - s)
};
MIL_DEVICE inline RowStats empty_stats() { return {-INFINITY, 0.f, 0.f, -INFINITY, 0.f, 0.f}; }

// The factor that moves a sum taken relative to old_max to new_max >= old_max (k: log2(e) over
// the temperature). 1 when the max stays, which also covers two empty sums (-inf - -inf).
MIL_DEVICE inline float rescale(float old_max, float new_max, float k) {
  return old_max == new_max ? 1.f : fast_exp2((old_max - new_max) * k);
}

// Adds N elements of the student (s) and teacher (t) rows. kt = log2(e) / tau.
template <bool kUnitTau, int N>
MIL_DEVICE inline void accumulate(RowStats& a, const float* s, const float* t, float kt) {
  float s_max = a.s_max, t_max = a.t_max;
#pragma unroll
  for (int i = 0; i < N; ++i) s_max = fmaxf(s_max, s[i]), t_max = fmaxf(t_max, t[i]);
  const float ft = rescale(a.t_max, t_max, kt);
  float z1 = a.z1 * rescale(a.s_max, s_max, kLog2e), zt = a.zt * ft, w = a.w * ft;
  float zs = kUnitTau ? 0.f : a.zs * rescale(a.s_max, s_max, kt);
#pragma unroll
  for (int i = 0; i < N; ++i) {
    z1 += fast_exp2((s[i] - s_max) * kLog2e);
    if constexpr (!kUnitTau) zs += fast_exp2((s[i] - s_max) * kt);
    const float e = fast_exp2((t[i] - t_max) * kt);
    zt += e;
    w += e * (t[i] - s[i]);
  }
  a = {s_max, z1, zs, t_max, zt, w};
}

template <bool kUnitTau>
MIL_DEVICE inline RowStats combine(const RowStats& a, const RowStats& b, float kt) {
  const float s_max = fmaxf(a.s_max, b.s_max), t_max = fmaxf(a.t_max, b.t_max);
  const float at = rescale(a.t_max, t_max, kt), bt = rescale(b.t_max, t_max, kt);
  RowStats r;
  r.s_max = s_max;
  r.t_max = t_max;
  r.z1 = a.z1 * rescale(a.s_max, s_max, kLog2e) + b.z1 * rescale(b.s_max, s_max, kLog2e);
  r.zs = kUnitTau ? 0.f : a.zs * rescale(a.s_max, s_max, kt) + b.zs * rescale(b.s_max, s_max, kt);
  r.zt = a.zt * at + b.zt * bt;
  r.w = a.w * at + b.w * bt;
  return r;
}

// Butterfly: every lane ends with the same bits (combine is commutative).
template <bool kUnitTau>
MIL_DEVICE inline RowStats warp_combine(RowStats v, float kt) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    RowStats o;
    o.s_max = __shfl_xor_sync(0xffffffffu, v.s_max, offset);
    o.z1 = __shfl_xor_sync(0xffffffffu, v.z1, offset);
    o.zs = __shfl_xor_sync(0xffffffffu, v.zs, offset);
    o.t_max = __shfl_xor_sync(0xffffffffu, v.t_max, offset);
    o.zt = __shfl_xor_sync(0xffffffffu, v.zt, offset);
    o.w = __shfl_xor_sync(0xffffffffu, v.w, offset);
    v = combine<kUnitTau>(v, o, kt);
  }
  return v;
}

// The block's statistics, in every thread (at tau = 1, zs is z1). Contains the only barrier.
template <bool kUnitTau>
MIL_DEVICE inline RowStats block_combine(RowStats v, float kt) {
  __shared__ RowStats warp_stats[32];
  v = warp_combine<kUnitTau>(v, kt);
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  if (lane == 0) warp_stats[warp] = v;
  __syncthreads();
  const int warps = int(blockDim.x / 32);
  v = warp_combine<kUnitTau>(lane < warps ? warp_stats[lane] : empty_stats(), kt);
  if constexpr (kUnitTau) v.zs = v.z1;
  return v;
}

// What pass 2 needs of the row's statistics.
struct GradConstants {
  float s_max, t_max, inv_z1, inv_zs, inv_zt, kt, dce, dkl_over_tau;
  int32_t label;
};

// dce (softmax(s) - onehot) + dkl (p - q) / tau for one element.
template <bool kUnitTau>
MIL_DEVICE inline float grad_element(float s, float t, bool is_label, const GradConstants& c) {
  const float p1 = fast_exp2((s - c.s_max) * kLog2e) * c.inv_z1;
  const float p = kUnitTau ? p1 : fast_exp2((s - c.s_max) * c.kt) * c.inv_zs;
  const float q = fast_exp2((t - c.t_max) * c.kt) * c.inv_zt;
  return c.dce * (is_label ? p1 - 1.f : p1) + c.dkl_over_tau * (p - q);
}

// Block b handles row b. kStaged: both rows are kept in dynamic shared memory between the passes.
// vectorized: student, teacher and dstudent sit at the same offset within 16 bytes, so a 16-byte
// vector of one lines up with the same elements of the others; otherwise every element is loaded
// on its own.
template <class T, bool kStaged, bool kUnitTau>
__global__ void __launch_bounds__(kMaxThreads, 1)
    distill_loss_kernel(float* __restrict__ ce, float* __restrict__ kl, T* dstudent,
                        const T* student, const T* __restrict__ teacher,
                        const int32_t* __restrict__ targets, int64_t vocab, DistillLossParams p,
                        bool vectorized) {
  constexpr int V = kVec<T>;
  extern __shared__ uint4 stage_vectors[];
  const int64_t row = blockIdx.x;
  const T* s = student + row * vocab;
  const T* t = teacher + row * vocab;
  T* ds = dstudent ? dstudent + row * vocab : nullptr;
  const int32_t label = targets[row];
  if (label == p.ignore_index) {  // the same for the whole block: no thread reaches the barrier
    if (threadIdx.x == 0) ce[row] = kl[row] = 0.f;
    if (ds) cross_entropy_detail::zero_row(ds, vocab);
    return;
  }
  const bool valid = label >= 0 && label < vocab;
  // Read before the barrier in block_combine, hence before any gradient is written over s.
  float label_logit = 0.f;
  if (threadIdx.x == 0) label_logit = valid ? to_float(s[label]) : NAN;
  const float inv_tau = 1.f / p.temperature, kt = kLog2e * inv_tau;

  VecSplit split = split16(s, vocab);
  if (!vectorized) split.head = split.tail = vocab, split.nvec = 0;  // all scalars
  const uint4* sv = reinterpret_cast<const uint4*>(s + split.head);
  const uint4* tv = reinterpret_cast<const uint4*>(t + split.head);
  // Element j of a row lives at stage[j + shift], so the row's 16-byte vectors are 16-byte
  // aligned in shared memory as well; the teacher's copy follows the student's.
  const int64_t stage_row = (vocab + 2 * V - 1) / V * V;
  T* stage_s = reinterpret_cast<T*>(stage_vectors);
  T* stage_t = stage_s + stage_row;
  uint4* ssv = reinterpret_cast<uint4*>(stage_s + split.head + split.shift);
  uint4* stv = reinterpret_cast<uint4*>(stage_t + split.head + split.shift);

  // Pass 1: online statistics over both rows, keeping copies when staged.
  RowStats acc = empty_stats();
  for (int64_t k = threadIdx.x; k < split.scalars(); k += blockDim.x) {
    const int64_t j = split.scalar_element(k);
    const T sj = s[j], tj = t[j];
    if constexpr (kStaged) stage_s[j + split.shift] = sj, stage_t[j + split.shift] = tj;
    const float fs = to_float(sj), ft = to_float(tj);
    accumulate<kUnitTau, 1>(acc, &fs, &ft, kt);
  }
  for (int64_t base = threadIdx.x; base < split.nvec; base += kUnroll * blockDim.x) {
    uint4 rs[kUnroll], rt[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = base + int64_t(u) * blockDim.x;
      if (k < split.nvec) {  // staged: read once, stream past the caches
        rs[u] = kStaged ? __ldcs(sv + k) : sv[k];
        rt[u] = kStaged ? __ldcs(tv + k) : tv[k];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = base + int64_t(u) * blockDim.x;
      if (k < split.nvec) {
        if constexpr (kStaged) ssv[k] = rs[u], stv[k] = rt[u];
        float fs[V], ft[V];
        unpack<T>(rs[u], fs);
        unpack<T>(rt[u], ft);
        accumulate<kUnitTau, V>(acc, fs, ft, kt);
      }
    }
  }
  const RowStats total = block_combine<kUnitTau>(acc, kt);
  if (threadIdx.x == 0) {  // NaN for an invalid label; max - s_y first, exact for nearby values
    ce[row] = (total.s_max - label_logit) + logf(total.z1);
    kl[row] = (total.w / total.zt - (total.t_max - total.s_max)) * inv_tau + logf(total.zs) -
              logf(total.zt);
  }
  if (!ds) return;

  // Pass 2: the gradient, written once. Each thread revisits exactly the elements it staged.
  const GradConstants c{total.s_max, total.t_max, 1.f / total.z1, 1.f / total.zs,
                        1.f / total.zt, kt, valid ? p.dce : NAN, p.dkl * inv_tau, label};
  for (int64_t k = threadIdx.x; k < split.scalars(); k += blockDim.x) {
    const int64_t j = split.scalar_element(k);
    const float fs = to_float(kStaged ? stage_s[j + split.shift] : s[j]);
    const float ft = to_float(kStaged ? stage_t[j + split.shift] : t[j]);
    ds[j] = from_float<T>(grad_element<kUnitTau>(fs, ft, j == c.label, c));
  }
  uint4* dv = reinterpret_cast<uint4*>(ds + split.head);
  for (int64_t base = threadIdx.x; base < split.nvec; base += kUnroll * blockDim.x) {
    uint4 rs[kUnroll], rt[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = base + int64_t(u) * blockDim.x;
      if (k < split.nvec) {
        rs[u] = kStaged ? ssv[k] : sv[k];
        rt[u] = kStaged ? stv[k] : tv[k];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = base + int64_t(u) * blockDim.x;
      if (k < split.nvec) {
        float fs[V], ft[V];
        unpack<T>(rs[u], fs);
        unpack<T>(rt[u], ft);
        const int64_t first = split.head + k * V;
#pragma unroll
        for (int i = 0; i < V; ++i) fs[i] = grad_element<kUnitTau>(fs[i], ft[i], first + i == c.label, c);
        __stcs(dv + k, pack<T>(fs));
      }
    }
  }
}

}  // namespace distill_loss_detail

// ce, kl: [rows] (float); student, teacher, dstudent: [rows, vocab]; dstudent null computes the
// losses only, dstudent == student computes the gradient in place. See distill_loss.hpp.
template <class T>
void distill_loss_forward_backward(float* ce, float* kl, std::type_identity_t<T>* dstudent,
                                   const T* student, const T* teacher, const int32_t* targets,
                                   int64_t rows, int64_t vocab, const DistillLossParams& p,
                                   cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "cuda::distill_loss_forward_backward runs in float or bf16");
  namespace d = distill_loss_detail;
  check_distill_params(p, rows, vocab);
  MIL_CHECK(rows <= std::numeric_limits<int32_t>::max(), "distill_loss: ", rows,
            " rows exceed the grid limit of one block per row");
  if (rows == 0) return;
  constexpr int V = kVec<T>;
  const int64_t vectors = (vocab + V - 1) / V;
  const int threads = int(std::clamp<int64_t>((vectors + 31) / 32 * 32, 32, d::kMaxThreads));
  const auto phase = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16; };
  const bool vectorized = phase(teacher) == phase(student) &&
                          (dstudent == nullptr || phase(dstudent) == phase(student));
  // Two staged rows: vocab elements each plus up to V - 1 of alignment shift.
  const size_t stage_bytes = 2 * size_t(((vocab + V) * int64_t(sizeof(T)) + 15) / 16 * 16);
  const bool unit_tau = p.temperature == 1.f;
  auto staged_kernel = unit_tau ? d::distill_loss_kernel<T, true, true>
                                : d::distill_loss_kernel<T, true, false>;
  const bool staged = dstudent != nullptr && opt_in_shared_memory(staged_kernel, stage_bytes);
  auto kernel = staged ? staged_kernel
                       : unit_tau ? d::distill_loss_kernel<T, false, true>
                                  : d::distill_loss_kernel<T, false, false>;
  kernel<<<dim3{unsigned(rows)}, threads, staged ? stage_bytes : 0, stream>>>(
      ce, kl, dstudent, student, teacher, targets, vocab, p, vectorized);
  MIL_CUDA_CHECK_LAUNCH("distill_loss_kernel");
}

}  // namespace mil::cuda
