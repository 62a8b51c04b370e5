#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include <mil/autograd/distill_loss.hpp>
#include <mil/kernels/cross_entropy.cuh>
#include <mil/kernels/distill_loss.cuh>
#include <mil/kernels/distill_loss.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

// The gradient split into its label elements (which carry dce (p - 1)) and all the others:
// compared separately, so the -1 of the labels cannot hide softmax errors.
template <class T>
void compare_gradient(const std::string& what, const std::vector<T>& out,
                      const std::vector<float>& ref, const std::vector<int32_t>& labels,
                      int64_t vocab, double tol) {
  std::vector<double> out_label, ref_label, out_rest, ref_rest;
  for (size_t i = 0; i < out.size(); ++i) {
    const bool is_label = labels[i / size_t(vocab)] == int64_t(i % size_t(vocab));
    (is_label ? out_label : out_rest).push_back(double(to_acc(out[i])));
    (is_label ? ref_label : ref_rest).push_back(double(ref[i]));
  }
  if (!ref_label.empty()) test::require_close(what + " gradient (labels)", out_label, ref_label, tol);
  test::require_close(what + " gradient (others)", out_rest, ref_rest, tol);
}

// Student and teacher logits representable in T (teacher = student + noise), labels with every
// fifth row from row 3 ignored.
struct Inputs {
  std::vector<float> student, teacher;
  std::vector<int32_t> labels;
};
template <class T>
Inputs make_inputs(int64_t rows, int64_t vocab, uint64_t seed, float range) {
  const size_t n = size_t(rows * vocab);
  Inputs in{test::representable<T>(n, seed, -range, range), {}, {}};
  const auto noise = test::random_vector<float>(n, seed + 1, -range / 4, range / 4);
  in.teacher.resize(n);
  for (size_t i = 0; i < n; ++i) in.teacher[i] = in.student[i] + noise[i];
  if (std::is_same_v<T, bf16>) in.teacher = test::round_to_bf16(in.teacher);
  for (int64_t r = 0; r < rows; ++r)
    in.labels.push_back(r % 5 == 3 ? -100 : int32_t((r * 7919 + int64_t(seed)) % vocab));
  return in;
}

// GPU against the CPU reference (float, same T-rounded values) at one size and setting: out of
// place into a poisoned buffer, with dstudent or the teacher misaligned against the student (the
// element-wise path), in place on rows starting off a 16-byte boundary, and forward only.
template <class T>
void check_distill(int64_t rows, int64_t vocab, uint64_t seed, const DistillLossParams& p,
                   float range = 8.f) {
  const std::string what = std::string("cuda distill_loss ") + test::type_name<T>() +
                           " rows=" + std::to_string(rows) + " vocab=" + std::to_string(vocab) +
                           " tau=" + std::to_string(p.temperature) + " dce=" + std::to_string(p.dce);
  const Inputs in = make_inputs<T>(rows, vocab, seed, range);
  const size_t n = in.student.size();
  std::vector<float> ref_ce(static_cast<size_t>(rows)), ref_kl(ref_ce), ref(n);
  cpu::distill_loss_forward_backward<float>(ref_ce.data(), ref_kl.data(), ref.data(),
                                            in.student.data(), in.teacher.data(), in.labels.data(),
                                            rows, vocab, p);
  const auto student = test::cast_vector<T>(in.student), teacher = test::cast_vector<T>(in.teacher);
  auto labels = test::to_gpu(in.labels);
  const double tol = test::tolerance<T>();
  cudaStream_t stream = mil::cuda::current_stream();
  auto check_losses = [&](const std::string& how, const Tensor<float, Cuda>& ce,
                          const Tensor<float, Cuda>& kl) {
    test::require_close(how + " ce", ce.to_vector(), ref_ce, 1e-5);
    // KL is a difference of terms as large as the logits: a larger relative error.
    test::require_close(how + " kl", kl.to_vector(), ref_kl, 1e-4);
  };

  for (auto [ds_offset, t_offset] : {std::pair<int64_t, int64_t>{0, 0}, {1, 0}, {0, 1}}) {
    auto s_gpu = test::to_gpu(student);
    auto t_gpu = test::gpu_at_offset(teacher, t_offset);
    auto ds_gpu = test::poisoned_gpu<T>(n + size_t(ds_offset));
    auto ce = test::poisoned_gpu<float>(size_t(rows)), kl = test::poisoned_gpu<float>(size_t(rows));
    mil::cuda::distill_loss_forward_backward<T>(ce.data(), kl.data(), ds_gpu.data() + ds_offset,
                                           s_gpu.data(), t_gpu.data() + t_offset, labels.data(),
                                           rows, vocab, p, stream);
    const std::string how = what + " dstudent offset " + std::to_string(ds_offset) +
                            " teacher offset " + std::to_string(t_offset);
    check_losses(how, ce, kl);
    compare_gradient(how, test::download(ds_gpu, ds_offset), ref, in.labels, vocab, tol);
    CHECK(test::bytes_of(s_gpu.to_vector()) == test::bytes_of(student));  // inputs untouched
    CHECK(test::bytes_of(test::download(t_gpu, t_offset)) == test::bytes_of(teacher));
  }
  {
    const int64_t offset = 3;
    auto s_gpu = test::gpu_at_offset(student, offset);
    auto t_gpu = test::gpu_at_offset(teacher, offset);
    auto ce = test::poisoned_gpu<float>(size_t(rows)), kl = test::poisoned_gpu<float>(size_t(rows));
    mil::cuda::distill_loss_forward_backward<T>(ce.data(), kl.data(), s_gpu.data() + offset,
                                           s_gpu.data() + offset, t_gpu.data() + offset,
                                           labels.data(), rows, vocab, p, stream);
    check_losses(what + " in place", ce, kl);
    compare_gradient(what + " in place", test::download(s_gpu, offset), ref, in.labels, vocab, tol);
  }
  {
    auto s_gpu = test::to_gpu(student), t_gpu = test::to_gpu(teacher);
    auto ce = test::poisoned_gpu<float>(size_t(rows)), kl = test::poisoned_gpu<float>(size_t(rows));
    mil::cuda::distill_loss_forward_backward<T>(ce.data(), kl.data(), nullptr, s_gpu.data(),
                                           t_gpu.data(), labels.data(), rows, vocab, p, stream);
    check_losses(what + " forward only", ce, kl);
  }
}

template <class T>
void check_all_sizes(uint64_t seed) {
  // 49152: SmolLM2's vocabulary (bf16: staged; float: two rows too wide, read twice); 49157:
  // odd, so rows start at every alignment; 131073: too wide to stage in either type.
  const DistillLossParams settings[] = {{1.f, 1.f, 0.1f, -100}, {2.f, 0.f, 1.f, -100},
                                        {0.5f, 0.3f, 0.7f, -100}};
  for (int64_t vocab : {5, 1000, 49152, 49157, 131073})
    for (int64_t rows : {1, 7, 33})
      for (const auto& p : settings) check_distill<T>(rows, vocab, seed++, p);
}

}  // namespace

TEST_CASE("distill_loss cuda: bf16 matches the CPU at awkward sizes - in place and not") {
  MIL_GPU_TEST_GUARD();
  check_all_sizes<bf16>(100);
}

TEST_CASE("distill_loss cuda: float matches the CPU at awkward sizes - in place and not") {
  MIL_GPU_TEST_GUARD();
  check_all_sizes<float>(200);
}

TEST_CASE("distill_loss cuda: logits of +-80 stay finite and accurate") {
  MIL_GPU_TEST_GUARD();
  for (float tau : {0.5f, 1.f, 3.f}) {
    check_distill<float>(5, 4099, 301, {tau, 0.5f, 0.5f, -100}, 80.f);
    check_distill<bf16>(5, 49152, 302, {tau, 0.5f, 0.5f, -100}, 80.f);
  }
}

TEST_CASE("distill_loss cuda: a teacher equal to the student gives KL 0 and the CE gradient") {
  MIL_GPU_TEST_GUARD();
  const int64_t rows = 9, vocab = 49152;
  const Inputs in = make_inputs<bf16>(rows, vocab, 401, 8.f);
  const auto logits = test::cast_vector<bf16>(in.student);
  auto labels = test::to_gpu(in.labels);
  auto s_gpu = test::to_gpu(logits), t_gpu = test::to_gpu(logits);
  cudaStream_t stream = mil::cuda::current_stream();
  for (float tau : {1.f, 2.f}) {
    auto ce = test::poisoned_gpu<float>(rows), kl = test::poisoned_gpu<float>(rows);
    auto ds = test::poisoned_gpu<bf16>(logits.size());
    mil::cuda::distill_loss_forward_backward<bf16>(ce.data(), kl.data(), ds.data(), s_gpu.data(),
                                              t_gpu.data(), labels.data(), rows, vocab,
                                              {tau, 0.25f, 3.f, -100}, stream);
    auto ce_ref = test::poisoned_gpu<float>(rows);
    auto dce = test::poisoned_gpu<bf16>(logits.size());
    mil::cuda::cross_entropy_forward_backward<bf16>(ce_ref.data(), dce.data(), s_gpu.data(),
                                               labels.data(), rows, vocab, 0.25f, -100, stream);
    for (float x : kl.to_vector()) CHECK(std::fabs(x) <= 1e-6f);
    test::require_close("equal rows ce", ce.to_vector(), ce_ref.to_vector(), 1e-6);
    compare_gradient("equal rows", ds.to_vector(), test::cast_vector<float>(dce.to_vector()),
                     in.labels, vocab, 1e-2);
  }
}

TEST_CASE("distill_loss cuda: the ops on the GPU match the CPU ops - chunked and not") {
  MIL_GPU_TEST_GUARD();
  const int64_t rows = 37, dim = 24, vocab = 1003, chunk = 8;
  const auto h = test::random_vector<float>(size_t(rows * dim), 501, -1.f, 1.f);
  const auto w = test::random_vector<float>(size_t(vocab * dim), 502, -1.f, 1.f);
  const auto th = test::random_vector<float>(size_t(rows * dim), 503, -1.f, 1.f);
  const auto tw = test::random_vector<float>(size_t(vocab * dim), 504, -1.f, 1.f);
  std::vector<int32_t> label_values;
  for (int64_t r = 0; r < rows; ++r) label_values.push_back(r % 3 ? int32_t(r * 11 % vocab) : -100);
  const ag::DistillLossConfig config{0.5f, 1.f, 2.f, false, -100};

  ag::Tape cpu_tape;
  ag::Var<float, Cpu> hc(Tensor<float, Cpu>::from(Shape{rows, dim}, h), true);
  ag::Var<float, Cpu> wc(Tensor<float, Cpu>::from(Shape{vocab, dim}, w), true);
  const auto ref = ag::distill_loss_lm_head(
      cpu_tape, hc, wc, Tensor<float, Cpu>::from(Shape{rows, dim}, th),
      Tensor<float, Cpu>::from(Shape{vocab, dim}, tw),
      Tensor<int32_t, Cpu>::from(Shape{rows}, label_values), config, rows);
  cpu_tape.backward();

  ag::Tape tape;
  ag::Var<float, Cuda> hg(Tensor<float, Cuda>::from(Shape{rows, dim}, h), true);
  ag::Var<float, Cuda> wg(Tensor<float, Cuda>::from(Shape{vocab, dim}, w), true);
  const auto t_hidden = Tensor<float, Cuda>::from(Shape{rows, dim}, th);
  const auto t_head = Tensor<float, Cuda>::from(Shape{vocab, dim}, tw);
  const auto labels = Tensor<int32_t, Cuda>::from(Shape{rows}, label_values);
  const auto loss =
      ag::distill_loss_lm_head(tape, hg, wg, t_hidden, t_head, labels, config, chunk);
  tape.backward();
  test::require_close("gpu lm_head ce", loss.ce.to_vector(), ref.ce.to_vector(), 1e-5);
  test::require_close("gpu lm_head kl", loss.kl.to_vector(), ref.kl.to_vector(), 1e-4);
  test::require_close("gpu lm_head d hidden", hg.grad().to_vector(), hc.grad().to_vector(), 1e-5);
  test::require_close("gpu lm_head d head", wg.grad().to_vector(), wc.grad().to_vector(), 1e-5);
  CHECK(loss.mean() == doctest::Approx(ref.mean()).epsilon(1e-5));

  // The unchunked op on the GPU, on the same logits.
  ag::Var<float, Cuda> logits(Tensor<float, Cuda>::empty(Shape{rows, vocab}), true);
  auto teacher = Tensor<float, Cuda>::empty(Shape{rows, vocab});
  mil::cuda::matmul(GemmShape{rows, vocab, dim, false, true}, logits.value().data(), hg.value().data(),
               wg.value().data(), mil::cuda::current_stream());
  mil::cuda::matmul(GemmShape{rows, vocab, dim, false, true}, teacher.data(), t_hidden.data(),
               t_head.data(), mil::cuda::current_stream());
  const auto full = ag::distill_loss(tape, logits, teacher, labels, config);
  tape.backward();
  test::require_close("gpu distill_loss ce", full.ce.to_vector(), ref.ce.to_vector(), 1e-5);
  test::require_close("gpu distill_loss kl", full.kl.to_vector(), ref.kl.to_vector(), 1e-4);
  CHECK(full.count == loss.count);
}
