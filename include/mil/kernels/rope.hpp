#pragma once
// Rotary position embedding (RoPE). Pair i of a head is rotated by the angle
// float(position) * inv_freq[i], computed in fp32 on both devices so that the CPU and the GPU
// (and Hugging Face) agree on the angle bit for bit; only cos/sin differ by rounding.
//
// Layouts: rotate_half pairs element i with i + head_dim/2 (Hugging Face checkpoints);
// interleaved pairs 2i with 2i+1 (GGUF / Meta checkpoints). The backward pass is the inverse
// rotation (inverse = true), since the Jacobian of a rotation is the rotation itself.
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace mil {

enum class RopeLayout { rotate_half, interleaved };

struct RopeConfig {
  int64_t head_dim;
  float theta = 10000.f;
  RopeLayout layout = RopeLayout::rotate_half;
  // Llama-3.1 frequency scaling ("rope_type": "llama3" in config.json).
  bool llama3_scaling = false;
  float factor = 8.f, low_freq_factor = 1.f, high_freq_factor = 4.f;
  float original_max_positions = 8192.f;
};

inline void rope_check_config(const RopeConfig& cfg) {
  MIL_CHECK(cfg.head_dim > 0 && cfg.head_dim % 2 == 0,
            "rope: head_dim must be positive and even, got ", cfg.head_dim);
  MIL_CHECK(cfg.theta > 0, "rope: theta must be positive, got ", cfg.theta);
  if (cfg.llama3_scaling)
    MIL_CHECK(cfg.factor > 0 && cfg.low_freq_factor > 0 &&
                  cfg.high_freq_factor > cfg.low_freq_factor && cfg.original_max_positions > 0,
              "rope: llama3 scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
              "original_max_positions > 0");
}

// head_dim/2 inverse frequencies in float, as Hugging Face computes them:
// inv_freq[i] = 1 / theta^(2i / head_dim), then Llama-3.1's piecewise scaling if enabled.
inline std::vector<float> rope_inv_freq(const RopeConfig& cfg) {
  rope_check_config(cfg);
  const int64_t half = cfg.head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    float exponent = float(2 * i) / float(cfg.head_dim);
    float power = float(std::pow(double(cfg.theta), double(exponent)));  // correctly rounded pow
    inv[size_t(i)] = 1.0f / power;
  }
  if (cfg.llama3_scaling) {
    const float two_pi = 6.283185307179586f;
    const float low_freq_wavelen = cfg.original_max_positions / cfg.low_freq_factor;
    const float high_freq_wavelen = cfg.original_max_positions / cfg.high_freq_factor;
    for (float& f : inv) {
      float wavelen = two_pi / f;
      if (wavelen < high_freq_wavelen) continue;  // high frequencies: unchanged
      if (wavelen > low_freq_wavelen) {           // low frequencies: slowed down by factor
        f = f / cfg.factor;
        continue;
      }
      float smooth = (cfg.original_max_positions / wavelen - cfg.low_freq_factor) /
                     (cfg.high_freq_factor - cfg.low_freq_factor);
      f = (1.f - smooth) * f / cfg.factor + smooth * f;
    }
  }
  return inv;
}

namespace cpu {

// in, out: [tokens, heads, head_dim] with token_stride elements between tokens (>= heads *
// head_dim, e.g. the q or k part of a fused QKV buffer); out may equal in. Elements between the
// heads of one token and the next are not touched. positions[t] >= 0 is token t's position.
template <class T>
void rope_apply(T* out, const T* in, const int32_t* positions, int64_t tokens, int64_t heads,
                int64_t token_stride, const RopeConfig& cfg, bool inverse) {
  using A = acc_t<T>;
  const std::vector<float> inv_freq = rope_inv_freq(cfg);
  const int64_t hd = cfg.head_dim, half = hd / 2;
  MIL_CHECK(tokens >= 0 && heads >= 0, "rope_apply: bad sizes tokens=", tokens, " heads=", heads);
  MIL_CHECK(token_stride >= heads * hd, "rope_apply: token_stride ", token_stride,
            " is smaller than heads * head_dim = ", heads * hd);
  for (int64_t t = 0; t < tokens; ++t)  // all checked first: an error leaves out untouched
    MIL_CHECK(positions[t] >= 0, "rope_apply: negative position ", positions[t], " at token ", t);
  const bool interleaved = cfg.layout == RopeLayout::interleaved;
  for (int64_t t = 0; t < tokens; ++t) {
    const float pos = float(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[size_t(i)];  // fp32, like the GPU and Hugging Face
      const A c = A(std::cos(double(angle)));
      const A s = inverse ? A(-std::sin(double(angle))) : A(std::sin(double(angle)));
      const int64_t ia = interleaved ? 2 * i : i;
      const int64_t ib = interleaved ? 2 * i + 1 : i + half;
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = t * token_stride + h * hd;
        const A a = to_acc(in[base + ia]), b = to_acc(in[base + ib]);  // read both: in place
        out[base + ia] = T(a * c - b * s);
        out[base + ib] = T(b * c + a * s);
      }
    }
  }
}

}  // namespace cpu
}  // namespace mil
