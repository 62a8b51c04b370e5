// RoPE on the GPU against the CPU reference (in double) on fresh random inputs.
#include <doctest/doctest.h>

#include <type_traits>
#include <vector>

#include <mil/kernels/rope.cuh>
#include <mil/kernels/rope.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;
using mil::test::random_vector;

namespace {

std::vector<int32_t> random_positions(int64_t n, uint64_t seed, int32_t max_pos) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    p[size_t(i)] = int32_t(rng::uniform(seed, 0, uint64_t(i), 0.f, float(max_pos) + 1.f));
  p[0] = max_pos;  // the largest angle always appears
  return p;
}

struct Case {
  int64_t tokens, heads, token_stride, offset;  // rotate heads at `offset` of each token
  RopeConfig cfg;
  bool inverse, in_place;
};

template <class T>
void check_against_cpu(const Case& c, uint64_t seed) {
  const int64_t hd = c.cfg.head_dim, n = c.tokens * c.token_stride;
  INFO("tokens ", c.tokens, " heads ", c.heads, " head_dim ", hd, " stride ", c.token_stride,
       " offset ", c.offset, " interleaved ", c.cfg.layout == RopeLayout::interleaved, " llama3 ",
       c.cfg.llama3_scaling, " inverse ", c.inverse, " in place ", c.in_place, " bf16 ",
       std::is_same_v<T, bf16>);
  auto in = test::representable<T>(size_t(n), seed, -2.f, 2.f);
  auto pos = random_positions(c.tokens, seed + 1, 100000);

  // CPU reference in double, written over a poisoned copy so the untouched elements match too
  auto in_d = test::cast_vector<double>(in);
  std::vector<double> ref(size_t(n), double(to_acc(test::poison<T>())));
  if (c.in_place) ref = in_d;
  cpu::rope_apply(ref.data() + c.offset, in_d.data() + c.offset, pos.data(), c.tokens, c.heads,
                  c.token_stride, c.cfg, c.inverse);

  auto in_gpu = test::to_gpu(test::cast_vector<T>(in));
  auto pos_gpu = test::to_gpu(pos);
  auto out_gpu = c.in_place ? in_gpu : test::poisoned_gpu<T>(size_t(n));
  cuda::rope_apply(out_gpu.data() + c.offset, in_gpu.data() + c.offset, pos_gpu.data(), c.tokens,
                   c.heads, c.token_stride, c.cfg, c.inverse, nullptr);
  MIL_CUDA_CHECK(cudaDeviceSynchronize());
  auto out = out_gpu.to_vector();

  // rotated elements by normalised error; all others must be exactly what was there before
  std::vector<double> got, want;
  for (int64_t t = 0; t < c.tokens; ++t)
    for (int64_t j = 0; j < c.token_stride; ++j) {
      const size_t k = size_t(t * c.token_stride + j);
      if (j >= c.offset && j < c.offset + c.heads * hd) {
        got.push_back(double(to_acc(out[k])));
        want.push_back(ref[k]);
      } else {
        REQUIRE(double(to_acc(out[k])) == ref[k]);
      }
    }
  test::require_close("rope gpu", got, want, test::tolerance<T>());
}

RopeConfig config(int64_t head_dim, RopeLayout layout, bool llama3) {
  RopeConfig c{head_dim};
  c.layout = layout;
  if (llama3) {
    c.theta = 500000.f;
    c.llama3_scaling = true;
  }
  return c;
}

template <class T>
void check_awkward_sizes(uint64_t seed) {
  int mode = 0;
  for (int64_t tokens : {1, 3, 129, 4097})
    for (int64_t hd : {64, 128, 256, 6})
      for (RopeLayout layout : {RopeLayout::rotate_half, RopeLayout::interleaved}) {
        const int64_t heads = 3;
        RopeConfig cfg = config(hd, layout, hd == 128);
        check_against_cpu<T>({tokens, heads, heads * hd, 0, cfg, (mode & 1) != 0, (mode & 2) != 0},
                             seed + uint64_t(mode) * 10);
        ++mode;
      }
}

}  // namespace

TEST_CASE("rope: gpu float matches the cpu at awkward sizes - both layouts - llama3 scaling") {
  MIL_GPU_TEST_GUARD();
  check_awkward_sizes<float>(100);
}

TEST_CASE("rope: gpu bf16 matches the cpu at awkward sizes - both layouts - llama3 scaling") {
  MIL_GPU_TEST_GUARD();
  check_awkward_sizes<bf16>(1100);
}

TEST_CASE("rope: gpu rotates q and k inside a fused QKV buffer - in place and out of place") {
  MIL_GPU_TEST_GUARD();
  // Llama-3-8B-like attention: 32 query heads, 8 key/value heads of 128; stride 48 heads.
  const int64_t hd = 128, q_heads = 32, kv_heads = 8, stride = (q_heads + 2 * kv_heads) * hd;
  for (RopeLayout layout : {RopeLayout::rotate_half, RopeLayout::interleaved}) {
    RopeConfig cfg = config(hd, layout, true);
    for (bool in_place : {false, true}) {
      check_against_cpu<bf16>({77, q_heads, stride, 0, cfg, false, in_place}, 2000);
      check_against_cpu<bf16>({77, kv_heads, stride, q_heads * hd, cfg, false, in_place}, 2010);
      check_against_cpu<float>({130, kv_heads, stride, q_heads * hd, cfg, true, in_place}, 2020);
    }
  }
  // an odd stride: element offsets that are not a multiple of anything
  check_against_cpu<float>(
      {33, 2, 2 * 10 + 3, 1, config(10, RopeLayout::interleaved, false), false, false}, 2030);
}

TEST_CASE("rope: gpu inverse undoes the rotation at positions up to 100000") {
  MIL_GPU_TEST_GUARD();
  const int64_t tokens = 500, heads = 4, hd = 64;
  RopeConfig cfg = config(hd, RopeLayout::rotate_half, false);
  auto in = random_vector<float>(size_t(tokens * heads * hd), 3000);
  auto pos = test::to_gpu(random_positions(tokens, 3001, 100000));
  auto buf = test::to_gpu(in);
  cuda::rope_apply(buf.data(), buf.data(), pos.data(), tokens, heads, heads * hd, cfg, false,
                   nullptr);
  cuda::rope_apply(buf.data(), buf.data(), pos.data(), tokens, heads, heads * hd, cfg, true,
                   nullptr);
  test::require_close("rope gpu inverse(apply(x))", buf.to_vector(), in, 1e-6);
}

TEST_CASE("rope: gpu head_dim above 256 is an error") {
  MIL_GPU_TEST_GUARD();
  auto buf = test::poisoned_gpu<float>(512);
  auto pos = test::to_gpu(std::vector<int32_t>{0});
  CHECK_THROWS_AS(cuda::rope_apply(buf.data(), buf.data(), pos.data(), 1, 1, 512, RopeConfig{512},
                                   false, nullptr),
                  Error);
}
