// RMSNorm on the GPU against the CPU reference (in double) on fresh random inputs.
#include <doctest/doctest.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include <mil/kernels/rmsnorm.cuh>
#include <mil/kernels/rmsnorm.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

struct Case {
  int64_t rows, dim;
  bool with_dw, accumulate_dx, accumulate_dw;
};

template <class T>
void check_against_cpu(const Case& c, uint64_t seed, cudaStream_t stream = nullptr) {
  const int64_t rows = c.rows, dim = c.dim, n = rows * dim;
  const float eps = 1e-5f;
  INFO("rows ", rows, " dim ", dim, " dw ", c.with_dw, " accumulate dx ", c.accumulate_dx,
       " accumulate dw ", c.accumulate_dw, " bf16 ", std::is_same_v<T, bf16>);
  auto x = test::representable<T>(size_t(n), seed, -2.f, 2.f);
  auto w = test::representable<T>(size_t(dim), seed + 1, 0.f, 2.f);
  auto g = test::representable<T>(size_t(n), seed + 2);
  auto dx0 = test::representable<T>(size_t(n), seed + 3);  // pre-filled gradients
  auto dw0 = test::representable<T>(size_t(dim), seed + 4);

  // CPU reference in double on the same values
  auto xd = test::cast_vector<double>(x), wd = test::cast_vector<double>(w),
       gd = test::cast_vector<double>(g);
  std::vector<double> out_ref(static_cast<size_t>(n)), rstd_ref(static_cast<size_t>(rows));
  auto dx_ref = test::cast_vector<double>(dx0), dw_ref = test::cast_vector<double>(dw0);
  cpu::rmsnorm_forward(out_ref.data(), rstd_ref.data(), xd.data(), wd.data(), rows, dim, eps);
  cpu::rmsnorm_backward(dx_ref.data(), c.with_dw ? dw_ref.data() : nullptr, gd.data(), xd.data(),
                        wd.data(), rstd_ref.data(), rows, dim, c.accumulate_dx, c.accumulate_dw);

  auto x_gpu = test::to_gpu(test::cast_vector<T>(x)), w_gpu = test::to_gpu(test::cast_vector<T>(w));
  auto g_gpu = test::to_gpu(test::cast_vector<T>(g));
  auto out_gpu = test::poisoned_gpu<T>(size_t(n));
  auto rstd_gpu = test::poisoned_gpu<float>(size_t(rows));
  auto dx_gpu =
      c.accumulate_dx ? test::to_gpu(test::cast_vector<T>(dx0)) : test::poisoned_gpu<T>(size_t(n));
  auto dw_gpu = c.accumulate_dw ? test::to_gpu(test::cast_vector<T>(dw0))
                                : test::poisoned_gpu<T>(size_t(dim));
  cuda::rmsnorm_forward(out_gpu.data(), rstd_gpu.data(), x_gpu.data(), w_gpu.data(), rows, dim, eps,
                        stream);
  cuda::rmsnorm_backward(dx_gpu.data(), c.with_dw ? dw_gpu.data() : nullptr, g_gpu.data(),
                         x_gpu.data(), w_gpu.data(), rstd_gpu.data(), rows, dim, c.accumulate_dx,
                         c.accumulate_dw, stream);
  MIL_CUDA_CHECK(cudaStreamSynchronize(stream));
  MIL_CUDA_CHECK(cudaGetLastError());

  test::require_close("rmsnorm gpu out", out_gpu.to_vector(), out_ref, test::tolerance<T>());
  test::require_close("rmsnorm gpu rstd", rstd_gpu.to_vector(), rstd_ref, 1e-5);
  test::require_close("rmsnorm gpu dx", dx_gpu.to_vector(), dx_ref, test::tolerance<T>());
  if (c.with_dw) {
    test::require_close("rmsnorm gpu dw", dw_gpu.to_vector(), dw_ref, test::tolerance<T>());
  } else {  // frozen weight: dw untouched
    auto dw_after = dw_gpu.to_vector();
    auto dw_before = c.accumulate_dw ? test::cast_vector<T>(dw0)
                                     : std::vector<T>(size_t(dim), test::poison<T>());
    CHECK(std::memcmp(dw_after.data(), dw_before.data(), dw_after.size() * sizeof(T)) == 0);
  }
}

template <class T>
void check_awkward_sizes(uint64_t seed) {
  int mode = 0;
  for (int64_t rows : {1, 3, 129, 4097})
    for (int64_t dim : {576, 1000, 4096 + 8, 7}) {
      // cycle through the gradient write modes so that every size meets several of them
      Case c{rows, dim, mode % 5 != 4, (mode & 1) != 0, (mode & 2) != 0};
      check_against_cpu<T>(c, seed + uint64_t(mode) * 10);
      ++mode;
    }
}

}  // namespace

TEST_CASE("rmsnorm: gpu float matches the cpu at awkward sizes") {
  MIL_GPU_TEST_GUARD();
  check_awkward_sizes<float>(100);
}

TEST_CASE("rmsnorm: gpu bf16 matches the cpu at awkward sizes") {
  MIL_GPU_TEST_GUARD();
  check_awkward_sizes<bf16>(300);
}

TEST_CASE("rmsnorm: gpu rows longer than the register cache re-read from memory") {
  MIL_GPU_TEST_GUARD();
  // one-element packs beyond 512 threads x 8 (forward) and x 4 (backward) elements; 16-byte
  // packs beyond that many packs
  check_against_cpu<float>({3, 5003, true, false, true}, 500);
  check_against_cpu<float>({5, 16388, true, true, false}, 510);
  check_against_cpu<bf16>({3, 40000, true, false, false}, 520);
  check_against_cpu<bf16>({2, 9001, true, true, true}, 530);
}

TEST_CASE("rmsnorm: gpu on a non-default stream") {
  MIL_GPU_TEST_GUARD();
  cudaStream_t stream;
  MIL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  check_against_cpu<bf16>({1000, 576, true, false, true}, 600, stream);
  check_against_cpu<float>({77, 1000, true, true, false}, 610, stream);
  MIL_CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST_CASE("rmsnorm: gpu misaligned pointers take the one-element path") {
  MIL_GPU_TEST_GUARD();
  const int64_t rows = 37, dim = 576;
  auto x = test::representable<bf16>(size_t(rows * dim), 700, -2.f, 2.f);
  auto w = test::representable<bf16>(size_t(dim), 701);
  auto g = test::representable<bf16>(size_t(rows * dim), 702);
  auto xd = test::cast_vector<double>(x), wd = test::cast_vector<double>(w),
       gd = test::cast_vector<double>(g);
  std::vector<double> out_ref(xd.size()), rstd_ref(rows), dx_ref(xd.size()), dw_ref(dim);
  cpu::rmsnorm_forward(out_ref.data(), rstd_ref.data(), xd.data(), wd.data(), rows, dim, 1e-6f);
  cpu::rmsnorm_backward(dx_ref.data(), dw_ref.data(), gd.data(), xd.data(), wd.data(),
                        rstd_ref.data(), rows, dim, false, false);
  // every buffer starts one element past a 16-byte boundary
  auto shifted = [](const std::vector<float>& v) {
    std::vector<bf16> r(v.size() + 1, bf16(0.f));
    for (size_t i = 0; i < v.size(); ++i) r[i + 1] = bf16(v[i]);
    return test::to_gpu(r);
  };
  auto x_gpu = shifted(x), w_gpu = shifted(w), g_gpu = shifted(g);
  auto out_gpu = test::poisoned_gpu<bf16>(xd.size() + 1),
       dx_gpu = test::poisoned_gpu<bf16>(xd.size() + 1);
  auto dw_gpu = test::poisoned_gpu<bf16>(size_t(dim) + 1);
  auto rstd_gpu = test::poisoned_gpu<float>(size_t(rows));
  cuda::rmsnorm_forward(out_gpu.data() + 1, rstd_gpu.data(), x_gpu.data() + 1, w_gpu.data() + 1,
                        rows, dim, 1e-6f, nullptr);
  cuda::rmsnorm_backward(dx_gpu.data() + 1, dw_gpu.data() + 1, g_gpu.data() + 1, x_gpu.data() + 1,
                         w_gpu.data() + 1, rstd_gpu.data(), rows, dim, false, false, nullptr);
  auto tail = [](const Tensor<bf16, Cuda>& t) {
    auto v = t.to_vector();
    CHECK(v[0].bits == test::poison<bf16>().bits);  // the element before is not written
    return std::vector<bf16>(v.begin() + 1, v.end());
  };
  test::require_close("rmsnorm gpu misaligned out", tail(out_gpu), out_ref, 1e-2);
  test::require_close("rmsnorm gpu misaligned dx", tail(dx_gpu), dx_ref, 1e-2);
  test::require_close("rmsnorm gpu misaligned dw", tail(dw_gpu), dw_ref, 1e-2);
}

TEST_CASE("rmsnorm: gpu dw is bitwise the same on every run") {
  MIL_GPU_TEST_GUARD();
  const int64_t rows = 4097, dim = 1000;
  auto x = test::to_gpu(test::cast_vector<bf16>(test::representable<bf16>(size_t(rows * dim), 800)));
  auto w = test::to_gpu(test::cast_vector<bf16>(test::representable<bf16>(size_t(dim), 801)));
  auto g = test::to_gpu(test::cast_vector<bf16>(test::representable<bf16>(size_t(rows * dim), 802)));
  auto out = Tensor<bf16, Cuda>::empty(Shape{rows, dim}),
       dx = Tensor<bf16, Cuda>::empty(Shape{rows, dim});
  auto rstd = Tensor<float, Cuda>::empty(Shape{rows});
  cuda::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), rows, dim, 1e-5f, nullptr);
  std::vector<uint16_t> first;
  for (int run = 0; run < 3; ++run) {
    auto dw = Tensor<bf16, Cuda>::empty(Shape{dim});
    cuda::rmsnorm_backward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), rows,
                           dim, false, false, nullptr);
    auto v = dw.to_vector();
    std::vector<uint16_t> bits(v.size());
    for (size_t i = 0; i < v.size(); ++i) bits[i] = v[i].bits;
    if (run == 0)
      first = bits;
    else
      CHECK(bits == first);
  }
}

TEST_CASE("rmsnorm: gpu zero rows zero an overwritten dw and keep an accumulated one") {
  MIL_GPU_TEST_GUARD();
  auto w = test::to_gpu(std::vector<float>{1, 2, 3});
  auto dw = test::to_gpu(std::vector<float>{4, 5, 6});
  cuda::rmsnorm_backward<float>(nullptr, dw.data(), nullptr, nullptr, w.data(), nullptr, 0, 3,
                                false, true, nullptr);
  CHECK(dw.to_vector() == std::vector<float>{4, 5, 6});
  cuda::rmsnorm_backward<float>(nullptr, dw.data(), nullptr, nullptr, w.data(), nullptr, 0, 3,
                                false, false, nullptr);
  CHECK(dw.to_vector() == std::vector<float>{0, 0, 0});
}
