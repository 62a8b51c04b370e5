// Gated grouped RMSNorm on the GPU against the CPU reference in double on the same T-representable
// inputs: packed and one-element paths, group sizes from 6 to a whole row, z (and dz) as a column
// block of a wider buffer, rstd kept or not, backward write modes and null gradients (columns of
// the z buffer outside the block left alone), zero rows, bad sizes.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include <mil/kernels/gated_rmsnorm.cuh>
#include <mil/kernels/gated_rmsnorm.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

// z sits at column z_offset of rows of z_stride (0: packed, offset 0).
struct Case {
  int64_t rows, dim, group_size, z_stride, z_offset;
};

struct Mode {
  bool accumulate_inputs, accumulate_dw;
  bool dx = true, dz = true, dw = true;
};

template <class T>
void check(const Case& c, const Mode& m, uint64_t seed) {
  GatedNormShape s{c.rows, c.dim, c.group_size, c.z_stride, 1e-5f};
  INFO("rows ", c.rows, " dim ", c.dim, " group ", c.group_size, " z stride ", c.z_stride,
       " offset ", c.z_offset, " accumulate ", m.accumulate_inputs, "/", m.accumulate_dw, " ",
       test::type_name<T>());
  const int64_t n = c.rows * c.dim, zn = c.z_offset + c.rows * s.zs(), groups = s.groups();
  const auto x = test::representable<T>(size_t(n), seed, -2.f, 2.f);
  const auto z = test::representable<T>(size_t(zn), seed + 1, -3.f, 3.f);
  const auto w = test::representable<T>(size_t(c.dim), seed + 2, 0.f, 2.f);
  const auto g = test::representable<T>(size_t(n), seed + 3);
  const auto dx0 = test::representable<T>(size_t(n), seed + 4);  // pre-filled gradients
  const auto dz0 = test::representable<T>(size_t(zn), seed + 5);
  const auto dw0 = test::representable<T>(size_t(c.dim), seed + 6);

  auto xd = test::cast_vector<double>(x), zd = test::cast_vector<double>(z),
       wd = test::cast_vector<double>(w), gd = test::cast_vector<double>(g);
  std::vector<double> out_ref(static_cast<size_t>(n)), rstd_ref(static_cast<size_t>(c.rows * groups));
  auto dx_ref = test::cast_vector<double>(dx0), dz_ref = test::cast_vector<double>(dz0),
       dw_ref = test::cast_vector<double>(dw0);
  cpu::gated_rmsnorm_forward(out_ref.data(), rstd_ref.data(), xd.data(), zd.data() + c.z_offset,
                             wd.data(), s);
  cpu::gated_rmsnorm_backward(m.dx ? dx_ref.data() : nullptr,
                              m.dz ? dz_ref.data() + c.z_offset : nullptr,
                              m.dw ? dw_ref.data() : nullptr, gd.data(), xd.data(),
                              zd.data() + c.z_offset, wd.data(), rstd_ref.data(), s,
                              m.accumulate_inputs, m.accumulate_dw);

  auto x_gpu = test::to_gpu(test::cast_vector<T>(x)), z_gpu = test::to_gpu(test::cast_vector<T>(z));
  auto w_gpu = test::to_gpu(test::cast_vector<T>(w)), g_gpu = test::to_gpu(test::cast_vector<T>(g));
  auto dx_gpu = test::to_gpu(test::cast_vector<T>(dx0)), dz_gpu = test::to_gpu(test::cast_vector<T>(dz0));
  auto dw_gpu = test::to_gpu(test::cast_vector<T>(dw0));
  auto out_gpu = test::poisoned_gpu<T>(size_t(n));
  auto out2_gpu = test::poisoned_gpu<T>(size_t(n));
  auto rstd_gpu = test::poisoned_gpu<float>(size_t(c.rows * groups));
  const T* zp = z_gpu.data() + c.z_offset;
  cuda::gated_rmsnorm_forward(out_gpu.data(), rstd_gpu.data(), x_gpu.data(), zp, w_gpu.data(), s,
                              nullptr);
  cuda::gated_rmsnorm_forward<T>(out2_gpu.data(), nullptr, x_gpu.data(), zp, w_gpu.data(), s, nullptr);
  cuda::gated_rmsnorm_backward(m.dx ? dx_gpu.data() : nullptr,
                               m.dz ? dz_gpu.data() + c.z_offset : nullptr,
                               m.dw ? dw_gpu.data() : nullptr, g_gpu.data(), x_gpu.data(), zp,
                               w_gpu.data(), rstd_gpu.data(), s, m.accumulate_inputs,
                               m.accumulate_dw, nullptr);
  MIL_CUDA_CHECK(cudaDeviceSynchronize());

  const double tol = test::tolerance<T>();
  const auto out = out_gpu.to_vector();
  test::require_close("gated rmsnorm gpu out", out, out_ref, tol);
  test::require_close("gated rmsnorm gpu rstd", rstd_gpu.to_vector(), rstd_ref, tol);
  CHECK(test::bytes_of(out2_gpu.to_vector()) == test::bytes_of(out));  // rstd null: same output
  const auto dx0_t = test::cast_vector<T>(dx0), dz0_t = test::cast_vector<T>(dz0),
             dw0_t = test::cast_vector<T>(dw0);
  if (m.dx) test::require_close("gated rmsnorm gpu dx", dx_gpu.to_vector(), dx_ref, tol);
  else CHECK(test::bytes_of(dx_gpu.to_vector()) == test::bytes_of(dx0_t));
  if (m.dw) test::require_close("gated rmsnorm gpu dw", dw_gpu.to_vector(), dw_ref, tol);
  else CHECK(test::bytes_of(dw_gpu.to_vector()) == test::bytes_of(dw0_t));
  const auto dz = dz_gpu.to_vector();
  if (m.dz) {
    std::vector<T> block;
    std::vector<double> block_ref;
    for (int64_t r = 0; r < c.rows; ++r)
      for (int64_t j = 0; j < c.dim; ++j) {
        block.push_back(dz[size_t(c.z_offset + r * s.zs() + j)]);
        block_ref.push_back(dz_ref[size_t(c.z_offset + r * s.zs() + j)]);
      }
    test::require_close("gated rmsnorm gpu dz", block, block_ref, tol);
  }
  // Elements outside the dz block (or all of it when dz is null) keep their values bitwise.
  size_t differ = 0;
  for (int64_t i = 0; i < zn; ++i) {
    const int64_t k = i - c.z_offset;
    const bool inside = m.dz && k >= 0 && k % s.zs() < c.dim;
    if (!inside && std::memcmp(&dz[size_t(i)], &dz0_t[size_t(i)], sizeof(T)) != 0) ++differ;
  }
  CHECK(differ == 0);
}

}  // namespace

TEST_CASE("gated rmsnorm: gpu forward and backward match the cpu") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 100;
  int mode = 0;
  // (rows, dim, group, z stride, z offset): Mamba-2 S (9 heads of 64, z a block of the in_proj
  // row), groups of 8, of 6 (one-element packs), one group per row, 64 lanes of a long group,
  // an odd z stride.
  for (const Case& c : {Case{37, 576, 64, 1536, 0}, Case{5, 24, 8, 0, 0}, Case{7, 36, 6, 0, 0},
                        Case{3, 256, 256, 0, 0}, Case{4, 2048, 1024, 2100, 8},
                        Case{9, 96, 32, 101, 5}}) {
    const Mode m{(mode & 1) != 0, (mode & 2) != 0};
    check<bf16>(c, m, seed);
    check<float>(c, Mode{!m.accumulate_inputs, !m.accumulate_dw}, seed + 1);
    seed += 10;
    ++mode;
  }
}

TEST_CASE("gated rmsnorm: gpu backward with null gradients") {
  MIL_GPU_TEST_GUARD();
  Mode frozen{false, false};
  frozen.dw = false;
  check<bf16>({33, 576, 64, 1536, 0}, frozen, 200);
  Mode only_dw{true, true};
  only_dw.dx = only_dw.dz = false;
  check<bf16>({33, 576, 64, 1536, 0}, only_dw, 210);
  Mode no_dz{true, false};
  no_dz.dz = false;
  check<float>({6, 36, 6, 40, 2}, no_dz, 220);
}

TEST_CASE("gated rmsnorm: gpu zero rows and bad sizes") {
  MIL_GPU_TEST_GUARD();
  auto dw = test::to_gpu(std::vector<bf16>(8, bf16(1.5f)));
  GatedNormShape s{0, 8, 4, 0, 1e-5f};
  // No rows: an overwritten dw becomes zero, an accumulated one stays.
  cuda::gated_rmsnorm_backward<bf16>(nullptr, nullptr, dw.data(), nullptr, nullptr, nullptr,
                                     nullptr, nullptr, s, false, true, nullptr);
  MIL_CUDA_CHECK(cudaDeviceSynchronize());
  CHECK(test::as_double(dw.to_vector()) == std::vector<double>(8, 1.5));
  cuda::gated_rmsnorm_backward<bf16>(nullptr, nullptr, dw.data(), nullptr, nullptr, nullptr,
                                     nullptr, nullptr, s, false, false, nullptr);
  MIL_CUDA_CHECK(cudaDeviceSynchronize());
  CHECK(test::as_double(dw.to_vector()) == std::vector<double>(8, 0.0));
  auto buf = Tensor<bf16, Cuda>::empty(Shape{64});
  bf16* p = buf.data();
  float* r = nullptr;
  CHECK_THROWS_AS(cuda::gated_rmsnorm_forward<bf16>(p, r, p, p, p, GatedNormShape{2, 12, 5, 0, 1e-5f},
                                                    nullptr),
                  Error);  // dim not a multiple of the group size
  CHECK_THROWS_AS(cuda::gated_rmsnorm_forward<bf16>(p, r, p, p, p, GatedNormShape{2, 8, 4, 6, 1e-5f},
                                                    nullptr),
                  Error);  // z stride below dim
  CHECK_THROWS_AS(cuda::gated_rmsnorm_backward<bf16>(p, p, p, p, p, p, p, nullptr,
                                                     GatedNormShape{2, 8, 4, 0, 1e-5f}, false,
                                                     false, nullptr),
                  Error);  // rstd missing
}
