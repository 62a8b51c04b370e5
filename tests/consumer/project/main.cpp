// Uses an installed mil through find_package(mil): tensors, bf16, the Philox RNG and, when the
// package was built with CUDA and a GPU is present, a round trip through GPU memory.
// Prints "consumer ok" when every check passes; exits non-zero otherwise.
#include <mil/mil.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAILED: %s\n", what);
    ++failures;
  }
}

}  // namespace

int main() {
  using namespace mil;
  static_assert(MIL_CUDA_ENABLED == MIL_EXPECT_CUDA,
                "the installed mil::mil target carries the wrong MIL_CUDA_ENABLED");

  // Philox-4x32-10 known answer (Random123's kat_vectors, counter 0, key 0).
  rng::U32x4 kat = rng::philox4x32(rng::U32x4{{0, 0, 0, 0}}, 0, 0);
  expect(kat.v[0] == 0x6627e8d5u && kat.v[3] == 0x9b00dbd8u, "Philox known answer");

  // bf16 rounds to nearest even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
  expect(bf16(1.0f + 0x1p-8f).bits == 0x3f80, "bf16 rounding of a halfway case");
  expect(float(bf16(-2.5f)) == -2.5f, "bf16 exact value");

  // A tensor filled from an RNG stream, a view of it and a slice of that view.
  auto t = Tensor<float, Cpu>::empty(Shape{3, 5});
  rng::fill_uniform(t, -1.0f, 1.0f, 1234, 7);
  bool stream_ok = true;
  for (int64_t i = 0; i < t.numel(); ++i)
    stream_ok = stream_ok && t[i] == rng::uniform(1234, 7, uint64_t(i), -1.0f, 1.0f) &&
                t[i] >= -1.0f && t[i] < 1.0f;
  expect(stream_ok, "fill_uniform equals the stream element by element");
  auto row = t.view(Shape{5, 3}).slice(2, 3);
  expect(row.shares_storage_with(t) && row.numel() == 3 && row[0] == t[6], "view and slice");
  bool threw = false;
  try {
    (void)t.view(Shape{4});
  } catch (const Error&) {
    threw = true;
  }
  expect(threw, "a bad view throws mil::Error");

  // bf16 normals: sample mean and variance of 4096 values.
  auto b = Tensor<bf16, Cpu>::empty(Shape{4096});
  rng::fill_normal(b, 0.0f, 1.0f, 99);
  double sum = 0, sum_sq = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    double x = double(float(b[i]));
    sum += x;
    sum_sq += x * x;
  }
  double mean = sum / double(b.numel()), var = sum_sq / double(b.numel()) - mean * mean;
  expect(std::fabs(mean) < 0.1 && std::fabs(var - 1.0) < 0.1, "normal mean and variance");

#if MIL_CUDA_ENABLED
  if (cuda::device_count() > 0) {
    auto back = t.to<Cuda>().to<Cpu>();
    expect(back.to_vector() == t.to_vector(), "GPU round trip");
    std::printf("GPU round trip checked\n");
  } else {
    std::printf("no CUDA device: GPU round trip not checked\n");
  }
#endif

  if (failures) return EXIT_FAILURE;
  std::printf("consumer ok: mil %d.%d.%d, CUDA path %s, t[0] = %.6f, mean %.4f, var %.4f\n",
              MIL_VERSION_MAJOR, MIL_VERSION_MINOR, MIL_VERSION_PATCH,
              MIL_CUDA_ENABLED ? "on" : "off", double(t[0]), mean, var);
  return EXIT_SUCCESS;
}
