#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include <mil/kernels/embedding.cuh>
#include <mil/kernels/embedding.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;  // GPU calls spell mil::cuda:: (CUB and libcu++ declare a global ::cuda)

namespace {

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    ids[size_t(i)] = std::min<int32_t>(
        int32_t(rng::uniform(seed, 7, uint64_t(i), 0.f, float(vocab))), int32_t(vocab - 1));
  return ids;
}

std::string describe(const char* what, const char* type, int64_t n, int64_t dim, int64_t vocab) {
  return std::string("cuda embedding ") + what + " " + type + " n=" + std::to_string(n) +
         " dim=" + std::to_string(dim) + " vocab=" + std::to_string(vocab);
}

template <class T>
void check_forward(int64_t n, int64_t dim, int64_t vocab, uint64_t seed) {
  auto table = test::cast_vector<T>(test::random_vector<float>(size_t(vocab * dim), seed));
  auto ids = random_ids(n, vocab, seed + 1);
  std::vector<T> ref(size_t(n * dim));
  cpu::embedding_forward(ref.data(), table.data(), ids.data(), n, dim, vocab);
  auto table_gpu = test::to_gpu(table);
  auto ids_gpu = test::to_gpu(ids);
  auto out = test::poisoned_gpu<T>(size_t(n * dim));
  mil::cuda::embedding_forward<T>(out.data(), table_gpu.data(), ids_gpu.data(), n, dim, vocab,
                                  mil::cuda::current_stream());
  auto got = out.to_vector();
  INFO(describe("forward", test::type_name<T>(), n, dim, vocab));
  CHECK(test::bytes_of(got) == test::bytes_of(ref));  // a copy: bitwise equal
}

// GPU backward of T against the CPU backward in float on the same (T-rounded) values, over a
// gradient pre-filled with 0.5 (accumulate) or poison (overwrite). Returns the GPU result.
template <class T>
std::vector<T> check_backward(const std::vector<int32_t>& ids, int64_t dim, int64_t vocab,
                              bool accumulate, uint64_t seed, double tol) {
  const int64_t n = int64_t(ids.size());
  auto dout = test::cast_vector<T>(test::random_vector<float>(size_t(n * dim), seed));
  std::vector<T> start(size_t(vocab * dim), accumulate ? T(0.5f) : test::poison<T>());
  std::vector<float> ref = test::cast_vector<float>(start);
  auto dout_f = test::cast_vector<float>(dout);
  cpu::embedding_backward(ref.data(), dout_f.data(), ids.data(), n, dim, vocab, accumulate);
  auto dtable = test::to_gpu(start);
  auto dout_gpu = test::to_gpu(dout);
  auto ids_gpu = test::to_gpu(ids);
  mil::cuda::embedding_backward<T>(dtable.data(), dout_gpu.data(), ids_gpu.data(), n, dim, vocab,
                                   accumulate, mil::cuda::current_stream());
  auto got = dtable.to_vector();
  test::require_close(describe(accumulate ? "backward accumulate" : "backward overwrite",
                               test::type_name<T>(), n, dim, vocab),
                      got, ref, tol);
  return got;
}

template <class T>
void check_backward_cases(double tol) {
  uint64_t seed = 300;
  // Many repeats per id (small vocab), dims on and off the vector width, single and multi-block.
  for (int64_t dim : {1, 64, 67, 576})
    for (int64_t n : {1, 1000})
      for (bool accumulate : {false, true}) {
        seed += 2;
        check_backward<T>(random_ids(n, 37, seed), dim, 37, accumulate, seed + 1, tol);
      }
  // One id repeated far past a block's chunk of the run search; and an all-distinct vocabulary.
  std::vector<int32_t> same(5000, 7);
  same[1234] = 3;
  check_backward<T>(same, 130, 11, true, seed += 2, tol);
  std::vector<int32_t> distinct(301);
  for (int32_t i = 0; i < 301; ++i) distinct[size_t(i)] = (i * 97) % 301;
  check_backward<T>(distinct, 33, 301, false, seed += 2, tol);
}

}  // namespace

TEST_CASE("embedding cuda: forward copies rows bitwise (vector and scalar paths)") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 10;
  for (int64_t dim : {1, 3, 8, 64, 67, 576})
    for (int64_t n : {1, 1000}) {
      check_forward<float>(n, dim, 301, seed += 2);
      check_forward<bf16>(n, dim, 301, seed += 2);
    }
}

TEST_CASE("embedding cuda: backward matches the CPU with repeated ids (float 1e-5)") {
  MIL_GPU_TEST_GUARD();
  check_backward_cases<float>(1e-5);
}

TEST_CASE("embedding cuda: backward matches the CPU with repeated ids (bf16 1e-2)") {
  MIL_GPU_TEST_GUARD();
  check_backward_cases<bf16>(1e-2);
}

TEST_CASE("embedding cuda: backward is deterministic (two runs bitwise equal)") {
  MIL_GPU_TEST_GUARD();
  auto ids = random_ids(4096, 50, 900);
  for (bool accumulate : {false, true}) {
    auto f1 = check_backward<float>(ids, 96, 50, accumulate, 901, 1e-5);
    auto f2 = check_backward<float>(ids, 96, 50, accumulate, 901, 1e-5);
    CHECK(test::bytes_of(f1) == test::bytes_of(f2));
    auto b1 = check_backward<bf16>(ids, 96, 50, accumulate, 902, 1e-2);
    auto b2 = check_backward<bf16>(ids, 96, 50, accumulate, 902, 1e-2);
    CHECK(test::bytes_of(b1) == test::bytes_of(b2));
  }
}

TEST_CASE("embedding cuda: out-of-range ids give zero rows and no gradient - never a fault") {
  MIL_GPU_TEST_GUARD();
  const int64_t dim = 16, vocab = 4;
  std::vector<int32_t> ids{1, -1, 4, 1000000, 3};
  auto table = test::random_vector<float>(size_t(vocab * dim), 11);
  auto out = test::poisoned_gpu<float>(ids.size() * dim);
  auto ids_gpu = test::to_gpu(ids);
  auto table_gpu = test::to_gpu(table);
  mil::cuda::embedding_forward<float>(out.data(), table_gpu.data(), ids_gpu.data(), 5, dim, vocab,
                                      mil::cuda::current_stream());
  auto got = out.to_vector();
  for (int64_t c = 0; c < dim; ++c) {
    CHECK(got[size_t(0 * dim + c)] == table[size_t(1 * dim + c)]);
    CHECK(got[size_t(1 * dim + c)] == 0.f);
    CHECK(got[size_t(2 * dim + c)] == 0.f);
    CHECK(got[size_t(3 * dim + c)] == 0.f);
    CHECK(got[size_t(4 * dim + c)] == table[size_t(3 * dim + c)]);
  }
  auto dout = test::random_vector<float>(ids.size() * dim, 12);
  auto dtable = test::to_gpu(std::vector<float>(size_t(vocab * dim), 0.5f));
  auto dout_gpu = test::to_gpu(dout);
  mil::cuda::embedding_backward<float>(dtable.data(), dout_gpu.data(), ids_gpu.data(), 5, dim,
                                       vocab, false, mil::cuda::current_stream());
  auto grad = dtable.to_vector();
  for (int64_t c = 0; c < dim; ++c) {
    CHECK(grad[size_t(0 * dim + c)] == 0.f);
    CHECK(grad[size_t(1 * dim + c)] == dout[size_t(0 * dim + c)]);
    CHECK(grad[size_t(2 * dim + c)] == 0.f);
    CHECK(grad[size_t(3 * dim + c)] == dout[size_t(4 * dim + c)]);
  }
  MIL_CUDA_CHECK(cudaDeviceSynchronize());  // an out-of-bounds access would surface here
}

TEST_CASE("embedding cuda: no tokens: overwriting backward zeroes the gradient") {
  MIL_GPU_TEST_GUARD();
  auto dtable = test::to_gpu(std::vector<bf16>(12, bf16(0.5f)));
  mil::cuda::embedding_backward<bf16>(dtable.data(), nullptr, nullptr, 0, 3, 4, true,
                                      mil::cuda::current_stream());
  for (bf16 x : dtable.to_vector()) CHECK(float(x) == 0.5f);
  mil::cuda::embedding_backward<bf16>(dtable.data(), nullptr, nullptr, 0, 3, 4, false,
                                      mil::cuda::current_stream());
  for (bf16 x : dtable.to_vector()) CHECK(float(x) == 0.f);
}
