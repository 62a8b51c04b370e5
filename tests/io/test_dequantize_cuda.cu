// GPU dequantisation against the CPU for every supported ggml type, into float and bf16, on blocks
// of random bytes with finite scales (the scale fields are overwritten with f16 values).
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include <mil/io/dequantize.cuh>

#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;
using io::GgmlType;

namespace {

// Byte offsets of the f16 scale fields in one block of each type.
std::vector<int> scale_offsets(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_1:
    case GgmlType::Q5_1:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: return {0, 2};
    case GgmlType::Q6_K: return {208};
    case GgmlType::F32: return {};
    default: return {0};
  }
}

std::vector<uint8_t> random_blocks(GgmlType t, int64_t n, uint64_t seed) {
  const auto info = io::check_dequantize(t, n);
  const int64_t blocks = n / info.block_size, bytes = blocks * info.block_bytes;
  std::vector<uint8_t> b(static_cast<size_t>(bytes));
  for (size_t i = 0; i < b.size(); ++i) b[i] = uint8_t(rng::uniform(seed, 0, i, 0.f, 256.f));
  auto put16 = [&](int64_t at, uint16_t h) {
    b[size_t(at)] = uint8_t(h & 0xff);
    b[size_t(at + 1)] = uint8_t(h >> 8);
  };
  auto put_f16 = [&](int64_t at, float v) { put16(at, fp16(v).bits); };
  if (t == GgmlType::F16 || t == GgmlType::BF16) {
    for (int64_t i = 0; i < n; ++i) {
      const float v = rng::uniform(seed, 1, uint64_t(i), -3.f, 3.f);
      put16(2 * i, t == GgmlType::F16 ? fp16(v).bits : bf16(v).bits);
    }
  } else if (t == GgmlType::F32) {
    for (int64_t i = 0; i < n; ++i) {
      const float v = rng::uniform(seed, 1, uint64_t(i), -3.f, 3.f);
      std::memcpy(&b[size_t(4 * i)], &v, 4);
    }
  }
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int off : scale_offsets(t))
      if (t != GgmlType::F16 && t != GgmlType::BF16 && t != GgmlType::F32)
        put_f16(blk * info.block_bytes + off, rng::uniform(seed, 2, uint64_t(blk * 4 + off), -0.1f, 0.1f));
  return b;
}

// Raw bytes on the GPU (tensors hold elements, so the bytes travel as int32 words).
Tensor<int32_t, Cuda> bytes_to_gpu(const std::vector<uint8_t>& b) {
  std::vector<int32_t> words((b.size() + 3) / 4, 0);
  std::memcpy(words.data(), b.data(), b.size());
  return test::to_gpu(words);
}

}  // namespace

TEST_CASE("dequantize cuda: every supported ggml type matches the CPU in float and bf16") {
  MIL_GPU_TEST_GUARD();
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
                     GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q4_K,
                     GgmlType::Q5_K, GgmlType::Q6_K}) {
    const int64_t n = 256 * 37;
    const auto bytes = random_blocks(t, n, 3 + uint64_t(t));
    std::vector<float> ref(static_cast<size_t>(n));
    io::dequantize_row(t, bytes.data(), ref.data(), n);
    const auto src_words = bytes_to_gpu(bytes);
    const auto* src = reinterpret_cast<const uint8_t*>(src_words.data());
    auto out = test::poisoned_gpu<float>(size_t(n));
    mil::cuda::dequantize<float>(t, src, out.data(), n, mil::cuda::current_stream());
    CAPTURE(io::ggml_type_info_or_throw(t).name);
    test::require_close("dequantize f32", out.to_vector(), ref, 1e-6);
    auto out_bf = test::poisoned_gpu<bf16>(size_t(n));
    mil::cuda::dequantize<bf16>(t, src, out_bf.data(), n, mil::cuda::current_stream());
    test::require_close("dequantize bf16", out_bf.to_vector(), ref, 4e-3);
  }
  CHECK_THROWS_WITH_AS(mil::cuda::dequantize<float>(GgmlType::Q2_K, nullptr, nullptr, 256,
                                                    mil::cuda::current_stream()),
                       doctest::Contains("not supported"), Error);
  CHECK_THROWS_WITH_AS(mil::cuda::dequantize<float>(GgmlType::Q4_0, nullptr, nullptr, 33,
                                                    mil::cuda::current_stream()),
                       doctest::Contains("whole number"), Error);
}
