#pragma once
// RoPE on the GPU (T = float or bf16, fp32 math). The inverse frequencies are computed once on
// the host (rope_inv_freq, the CPU's own numbers) and passed as a kernel argument. A thread owns
// one pair index of one token: it computes the angle float(position) * inv_freq[i] and its
// precise sincosf once, then rotates that pair in every head of the token.
#include "../core/config.hpp"
#if !MIL_CUDA_ENABLED
#error "mil/kernels/rope.cuh needs a CUDA build: compile with nvcc and -DMIL_CUDA_ENABLED=1"
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/dtype.hpp"
#include "rope.hpp"

namespace mil::cuda {
namespace rope_detail {

constexpr int kMaxHeadDim = 256;

struct InvFreq {
  float v[kMaxHeadDim / 2];
};

inline bool same_frequencies(const RopeConfig& a, const RopeConfig& b) {
  return a.head_dim == b.head_dim && a.theta == b.theta && a.llama3_scaling == b.llama3_scaling &&
         a.factor == b.factor && a.low_freq_factor == b.low_freq_factor &&
         a.high_freq_factor == b.high_freq_factor &&
         a.original_max_positions == b.original_max_positions;
}

// The table of the last configuration used on this thread: a model calls rope with one
// configuration many times per step, and recomputing head_dim/2 pows each call would cost
// microseconds of host time per launch.
inline const InvFreq& inv_freq_table(const RopeConfig& cfg) {
  thread_local RopeConfig last{0};
  thread_local InvFreq table{};
  if (last.head_dim == 0 || !same_frequencies(last, cfg)) {
    std::vector<float> f = rope_inv_freq(cfg);  // validates cfg
    MIL_CHECK(cfg.head_dim <= kMaxHeadDim, "rope on the GPU supports head_dim up to ", kMaxHeadDim,
              ", got ", cfg.head_dim);
    std::memset(&table, 0, sizeof(table));
    std::copy(f.begin(), f.end(), table.v);
    last = cfg;
  }
  return table;
}

}  // namespace rope_detail

// Block: (head_dim / 2 pair lanes) x (tokens_per_block); grid: tokens / tokens_per_block.
// sign = -1 rotates by -angle (the backward). in and out may be the same buffer: each element
// is read and written by one thread only, reads first.
template <class T>
__global__ void rope_kernel(T* out, const T* in, const int32_t* positions, int64_t tokens,
                            int64_t heads, int64_t token_stride, int head_dim, bool interleaved,
                            float sign, const __grid_constant__ rope_detail::InvFreq inv_freq) {
  const int i = int(threadIdx.x);
  const int half = head_dim / 2;
  const int64_t t = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  if (t >= tokens) return;
  const float angle = float(positions[t]) * inv_freq.v[i];  // fp32, bitwise as on the CPU
  float s, c;
  sincosf(angle, &s, &c);  // precise: large angles (positions ~1e5) are reduced correctly
  s *= sign;
  const int64_t ia = interleaved ? 2 * i : i;
  const int64_t ib = interleaved ? 2 * i + 1 : i + half;
  const T* src = in + t * token_stride;
  T* dst = out + t * token_stride;
  for (int64_t h = 0; h < heads; ++h, src += head_dim, dst += head_dim) {
    const float a = float(src[ia]), b = float(src[ib]);
    dst[ia] = T(a * c - b * s);
    dst[ib] = T(b * c + a * s);
  }
}

// Same contract as cpu::rope_apply, except that positions (on the device) are not validated:
// the caller checks them on the host where they come from (a negative one rotates backwards).
template <class T>
void rope_apply(T* out, const T* in, const int32_t* positions, int64_t tokens, int64_t heads,
                int64_t token_stride, const RopeConfig& cfg, bool inverse, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "rope_apply on the GPU supports float and bf16");
  const rope_detail::InvFreq& inv_freq = rope_detail::inv_freq_table(cfg);
  const int64_t hd = cfg.head_dim;
  MIL_CHECK(tokens >= 0 && heads >= 0, "rope_apply: bad sizes tokens=", tokens, " heads=", heads);
  MIL_CHECK(token_stride >= heads * hd, "rope_apply: token_stride ", token_stride,
            " is smaller than heads * head_dim = ", heads * hd);
  if (tokens == 0 || heads == 0) return;
  const int half = int(hd / 2);
  const int tokens_per_block = std::max(1, 256 / half);
  const int64_t grid = (tokens + tokens_per_block - 1) / tokens_per_block;
  MIL_CHECK(grid <= INT32_MAX, "rope_apply: too many tokens: ", tokens);
  rope_kernel<T><<<unsigned(grid), dim3(unsigned(half), unsigned(tokens_per_block)), 0, stream>>>(
      out, in, positions, tokens, heads, token_stride, int(hd),
      cfg.layout == RopeLayout::interleaved, inverse ? -1.f : 1.f, inv_freq);
  MIL_CUDA_CHECK_LAUNCH("rope_kernel");
}

}  // namespace mil::cuda
