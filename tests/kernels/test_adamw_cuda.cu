#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include <mil/kernels/adamw.cuh>
#include <mil/kernels/adamw.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

// Three AdamW steps on the GPU and on the CPU from the same state and gradients. offset: where
// master, m, v and the gradient start in their buffers; param_offset: the same for the copy
// (different from offset: the element-wise path). device_scale: a clipping factor on the device.
template <class P, class G>
void check_adamw(int64_t n, bool with_param, bool device_scale, int64_t offset,
                 int64_t param_offset, uint64_t seed) {
  const std::string what = std::string("cuda adamw P=") + test::type_name<P>() + " G=" + test::type_name<G>() +
                           " n=" + std::to_string(n) + " param=" + std::to_string(with_param) +
                           " device_scale=" + std::to_string(device_scale) +
                           " offsets=" + std::to_string(offset) + "," +
                           std::to_string(param_offset);
  auto master = test::random_vector<float>(size_t(n), seed, -1.f, 1.f);
  auto m = test::random_vector<float>(size_t(n), seed + 1, -0.1f, 0.1f);
  auto v = test::random_vector<float>(size_t(n), seed + 2, 0.f, 0.01f);
  auto master_gpu = test::gpu_at_offset(master, offset), m_gpu = test::gpu_at_offset(m, offset),
       v_gpu = test::gpu_at_offset(v, offset);
  auto param_gpu = test::poisoned_gpu<P>(size_t(n + param_offset));
  const float clip = 0.37f;
  auto clip_gpu = test::to_gpu(std::vector<float>{clip});
  std::vector<P> param(size_t(n), test::poison<P>());

  AdamWStep s;
  s.lr = 3e-3f, s.beta1 = 0.9f, s.beta2 = 0.95f, s.eps = 1e-8f, s.weight_decay = 0.1f;
  for (int64_t t = 1; t <= 3; ++t) {
    s.step = t;
    s.grad_scale = 0.8f;
    auto grad =
        test::cast_vector<G>(test::random_vector<float>(size_t(n), seed + 10 + uint64_t(t)));
    auto grad_gpu = test::gpu_at_offset(grad, offset);
    cuda::adamw_update<P, G>(
        master_gpu.data() + offset, m_gpu.data() + offset, v_gpu.data() + offset,
        with_param ? param_gpu.data() + param_offset : nullptr, grad_gpu.data() + offset, n, s,
        device_scale ? clip_gpu.data() : nullptr, cuda::current_stream());
    AdamWStep cpu_step = s;
    if (device_scale) cpu_step.grad_scale = s.grad_scale * clip;  // the kernel's product
    cpu::adamw_update(master.data(), m.data(), v.data(), with_param ? param.data() : nullptr,
                      grad.data(), n, cpu_step);
  }
  const auto master_out = test::download(master_gpu, offset);
  test::require_close(what + " master", master_out, master, 1e-6);
  test::require_close(what + " m", test::download(m_gpu, offset), m, 1e-6);
  test::require_close(what + " v", test::download(v_gpu, offset), v, 1e-6);
  const auto param_out = test::download(param_gpu, param_offset);
  if (with_param) {
    bool copies = true;  // the copy is P(master) of the GPU's own master weights
    for (int64_t i = 0; i < n; ++i) {
      const P expect = P(master_out[size_t(i)]);
      copies = copies && std::memcmp(&param_out[size_t(i)], &expect, sizeof(P)) == 0;
    }
    CHECK_MESSAGE(copies, what, ": param is not P(master)");
    test::require_close(what + " param", param_out, param, std::is_same_v<P, float> ? 1e-6 : 1e-2);
  } else {
    const P poison = test::poison<P>();
    bool untouched = true;
    for (const P& p : param_out) untouched = untouched && std::memcmp(&p, &poison, sizeof(P)) == 0;
    CHECK_MESSAGE(untouched, what, ": a null param must not be written");
  }
}

}  // namespace

TEST_CASE("adamw cuda: bf16 parameters and gradients match the CPU at awkward sizes") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 500;
  for (int64_t n : {1, 1001, 1000007})
    for (bool device_scale : {false, true}) {
      check_adamw<bf16, bf16>(n, true, device_scale, 0, 0, seed += 20);
      check_adamw<bf16, bf16>(n, true, device_scale, 1, 1, seed += 20);  // vectors after 3 scalars
    }
}

TEST_CASE("adamw cuda: float parameters and gradients match the CPU at awkward sizes") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 600;
  for (int64_t n : {1, 1001, 1000007})
    for (bool device_scale : {false, true}) {
      check_adamw<float, float>(n, true, device_scale, 0, 0, seed += 20);
      check_adamw<float, float>(n, false, device_scale, 2, 0, seed += 20);  // master is the param
    }
}

TEST_CASE("adamw cuda: mixed types - and buffers aligned differently (the element-wise path)") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 700;
  for (int64_t n : {1, 1001, 1000007}) {
    check_adamw<bf16, float>(n, true, true, 0, 1, seed += 20);  // param off by one element
    check_adamw<float, bf16>(n, true, false, 3, 1, seed += 20);
    check_adamw<bf16, bf16>(n, false, true, 1, 0, seed += 20);  // no copy: vectors again
  }
}
