#pragma once
// Weights in ggml block formats for tests of the block products: random quants and scales written
// byte by byte, so a test does not depend on a quantiser.
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include <doctest/doctest.h>

#include <mil/core/dtype.hpp>
#include <mil/io/dequantize.hpp>

namespace mil::test {

using Bytes = std::vector<uint8_t>;
using io::GgmlType;

inline void put_half(uint8_t* p, float v) {
  const uint16_t h = fp16(v).bits;
  std::memcpy(p, &h, 2);
}

// `out` rows of `in` weights in `type`, written byte by byte: random quants and random scales of
// the magnitudes real checkpoints have (weights of order 0.01 - 0.1), mins of Q4_1 / Q4_K that
// shift the codes' centre as a real quantiser's would.
inline Bytes random_weights(GgmlType type, int64_t out, int64_t in, uint32_t seed) {
  std::mt19937 gen(seed);
  auto unit = [&] { return float(gen() >> 8) * (1.f / 16777216.f); };
  auto byte = [&] { return uint8_t(gen() >> 24); };
  const auto info = io::ggml_type_info_or_throw(type);
  Bytes w(size_t(io::ggml_row_bytes(type, in) * out));
  for (size_t at = 0; at < w.size(); at += size_t(info.block_bytes)) {
    uint8_t* b = w.data() + at;
    for (int64_t i = 0; i < info.block_bytes; ++i) b[i] = byte();  // quants, qh, packed scales
    switch (type) {
      case GgmlType::Q8_0: put_half(b, (0.2f + unit()) * 1e-3f); break;
      case GgmlType::Q4_0: put_half(b, (0.2f + unit()) * 2e-2f); break;
      case GgmlType::Q4_1: {
        const float d = (0.2f + unit()) * 2e-2f;
        put_half(b, d);
        put_half(b + 2, -d * (6.f + 4.f * unit()));
        break;
      }
      case GgmlType::Q4_K:
        put_half(b, (0.2f + unit()) * 5e-4f);      // d: times 6-bit scales up to 63
        put_half(b + 2, (0.2f + unit()) * 2e-3f);  // dmin: times 6-bit mins
        break;
      case GgmlType::Q6_K: put_half(b + 208, (0.2f + unit()) * 5e-5f); break;  // int8 scales
      case GgmlType::F16: put_half(b, (2.f * unit() - 1.f) * 0.1f); break;    // one value a block
      case GgmlType::BF16: {
        const uint16_t h = bf16((2.f * unit() - 1.f) * 0.1f).bits;
        std::memcpy(b, &h, 2);
        break;
      }
      default: FAIL("no generator for this type");
    }
  }
  return w;
}

// The weights (io::dequantize_row, the reference decoder) and, per weight, the magnitude its
// rounding is relative to: |scale part| + |min part| (dequantised with the min zeroed, then with
// the scale zeroed), since d q + m computed with one rounding or two differ by eps |d q|, which
// can exceed eps |d q + m| where the two cancel.
struct Reference {
  std::vector<float> w, magnitude;
};
inline Reference dequantised(GgmlType type, const Bytes& q, int64_t out, int64_t in) {
  Reference ref{std::vector<float>(size_t(out * in)), std::vector<float>(size_t(out * in))};
  const int64_t row_bytes = io::ggml_row_bytes(type, in);
  for (int64_t o = 0; o < out; ++o)
    io::dequantize_row(type, q.data() + o * row_bytes, ref.w.data() + o * in, in);
  const bool has_min = type == GgmlType::Q4_1 || type == GgmlType::Q4_K;
  if (!has_min) {
    for (size_t i = 0; i < ref.w.size(); ++i) ref.magnitude[i] = std::abs(ref.w[i]);
    return ref;
  }
  Bytes scale_only = q, min_only = q;
  const int64_t bb = io::ggml_type_info_or_throw(type).block_bytes;
  for (size_t at = 0; at < q.size(); at += size_t(bb)) {
    put_half(scale_only.data() + at + 2, 0.f);  // Q4_1 m, Q4_K dmin
    put_half(min_only.data() + at, 0.f);        // d
  }
  std::vector<float> a(static_cast<size_t>(in)), b(static_cast<size_t>(in));
  for (int64_t o = 0; o < out; ++o) {
    io::dequantize_row(type, scale_only.data() + o * row_bytes, a.data(), in);
    io::dequantize_row(type, min_only.data() + o * row_bytes, b.data(), in);
    for (int64_t i = 0; i < in; ++i) ref.magnitude[size_t(o * in + i)] = std::abs(a[size_t(i)]) + std::abs(b[size_t(i)]);
  }
  return ref;
}

}  // namespace mil::test
