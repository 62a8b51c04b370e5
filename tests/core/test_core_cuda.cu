// Core on the GPU: RNG fills against the CPU streams, tensor copies and views in GPU memory, the
// caching allocator's reuse, and checked CUDA calls.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include <mil/core/rng.cuh>
#include <mil/core/tensor.hpp>

#include "common/gpu.hpp"

using namespace mil;

namespace {

// A stream of our own for a test case, made current for new work and restored on exit.
struct ScopedStream {
  cudaStream_t stream = nullptr;
  cudaStream_t previous;
  ScopedStream() : previous(cuda::current_stream()) {
    MIL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cuda::current_stream() = stream;
  }
  ~ScopedStream() {
    (void)cudaStreamSynchronize(stream);
    cuda::current_stream() = previous;
    // Blocks cached for this stream go back to the driver before the handle can be reused.
    cuda::CachingAllocator::instance().release_cached();
    (void)cudaStreamDestroy(stream);
  }
  ScopedStream(const ScopedStream&) = delete;
  ScopedStream& operator=(const ScopedStream&) = delete;
};

uint16_t bits_of(bf16 x) { return x.bits; }
uint32_t bits_of(float x) { return float_bits(x); }

// The CPU stream value the GPU fill must reproduce, rounded to T as the CPU fill rounds it.
template <class T>
T cpu_uniform(uint64_t seed, uint64_t offset, uint64_t i, float lo, float hi) {
  return T(rng::uniform(seed, offset, i, lo, hi));
}

// Fills [1, n + 1) of a poisoned buffer of n + 2 elements on the GPU; checks every element
// bitwise against the CPU stream and that the two guard elements are untouched.
template <class T>
void check_uniform_fill(int64_t n, float lo, float hi, uint64_t seed, uint64_t offset) {
  auto buf = test::poisoned_gpu<T>(size_t(n + 2));
  cuda::fill_uniform(buf.data() + 1, n, lo, hi, seed, offset, cuda::current_stream());
  MIL_CUDA_CHECK(cudaStreamSynchronize(cuda::current_stream()));
  std::vector<T> got = buf.to_vector();
  INFO("n = ", n, ", [", lo, ", ", hi, "), seed ", seed, ", offset ", offset);
  CHECK(bits_of(got[0]) == bits_of(test::poison<T>()));
  CHECK(bits_of(got[size_t(n + 1)]) == bits_of(test::poison<T>()));
  int64_t mismatches = 0, first_bad = -1;
  for (int64_t i = 0; i < n; ++i) {
    T want = cpu_uniform<T>(seed, offset, uint64_t(i), lo, hi);
    if (bits_of(got[size_t(i + 1)]) != bits_of(want)) {
      if (first_bad < 0) first_bad = i;
      ++mismatches;
    }
  }
  INFO("first mismatch at element ", first_bad);
  CHECK(mismatches == 0);
}

}  // namespace

TEST_CASE("rng cuda: fill_uniform is bitwise equal to the CPU stream") {
  MIL_GPU_TEST_GUARD();
  // Single element, partial and whole Philox blocks, one CUDA block, many blocks and a size that
  // needs the grid-stride loop (more than 8192 * 256 Philox blocks).
  for (int64_t n : {1, 3, 4, 5, 255, 1021, 1024 * 4 + 7, 1000003, 8389123 + 3}) {
    check_uniform_fill<float>(n, -0.37f, 1.91f, 42, 7);  // a span whose products round
    check_uniform_fill<bf16>(n, -0.37f, 1.91f, 42, 7);
  }
  check_uniform_fill<float>(4099, 0.0f, 1.0f, 0xfedcba9876543210ull, 0x0123456789abcdefull);
  check_uniform_fill<float>(4099, -1e-3f, 1e-3f, 1, 0);
  check_uniform_fill<bf16>(4099, -3.0f, -2.0f, 1, 1ull << 40);
}

TEST_CASE("rng cuda: fill_normal matches the CPU stream") {
  MIL_GPU_TEST_GUARD();
  for (int64_t n : {1, 2, 3, 257, 100003, 2100001}) {
    INFO("n = ", n);
    const uint64_t seed = 1234, offset = 99;
    auto f = test::poisoned_gpu<float>(size_t(n));
    cuda::fill_normal(f.data(), n, 0.25f, 1.5f, seed, offset, cuda::current_stream());
    auto b = test::poisoned_gpu<bf16>(size_t(n));
    cuda::fill_normal(b.data(), n, 0.25f, 1.5f, seed, offset, cuda::current_stream());
    std::vector<float> got = f.to_vector(), ref(static_cast<size_t>(n));
    std::vector<bf16> got_b = b.to_vector();
    auto ref_t = Tensor<float, Cpu>::empty(Shape{n});
    rng::fill_normal(ref_t, 0.25f, 1.5f, seed, offset);
    std::memcpy(ref.data(), ref_t.data(), size_t(n) * sizeof(float));
    // logf / cospif against double log / cos: a few float ulps per element.
    test::require_close("fill_normal f32", got, ref, 1e-6);
    int64_t far = 0, bf16_far = 0;
    for (int64_t i = 0; i < n; ++i) {
      float r = ref[size_t(i)];
      float tol = 1e-5f * std::max(1.0f, std::fabs(r));  // catches wrong elements, not rounding
      far += !(std::fabs(got[size_t(i)] - r) <= tol);
      // bf16 values are the float values rounded (relative error <= 2^-9), plus the float error.
      float got_bf16 = float(got_b[size_t(i)]);
      bf16_far += !(std::fabs(got_bf16 - r) <= 0x1p-8f * std::fabs(r) + tol);
    }
    CHECK(far == 0);
    CHECK(bf16_far == 0);
    test::require_close("fill_normal bf16", got_b, ref, 1e-2);
  }
}

TEST_CASE("rng cuda: tensor fills run on the current stream and match the CPU fills") {
  MIL_GPU_TEST_GUARD();
  ScopedStream scoped;
  auto g = Tensor<bf16, Cuda>::empty(Shape{33, 65});
  rng::fill_uniform(g, -0.5f, 0.5f, 3, 11);
  auto c = Tensor<bf16, Cpu>::empty(Shape{33, 65});
  rng::fill_uniform(c, -0.5f, 0.5f, 3, 11);
  std::vector<bf16> got = g.to_vector(), want = c.to_vector();  // to_vector syncs the stream
  REQUIRE(got.size() == want.size());
  int64_t mismatches = 0;
  for (size_t i = 0; i < got.size(); ++i) mismatches += got[i].bits != want[i].bits;
  CHECK(mismatches == 0);

  auto gn = Tensor<float, Cuda>::empty(Shape{1000});
  rng::fill_normal(gn, 0.0f, 2.0f, 3, 12);
  auto cn = Tensor<float, Cpu>::empty(Shape{1000});
  rng::fill_normal(cn, 0.0f, 2.0f, 3, 12);
  test::require_close("tensor fill_normal", gn.to_vector(), cn.to_vector(), 1e-6);

  auto empty = Tensor<float, Cuda>::empty(Shape{0});
  rng::fill_uniform(empty, 0.0f, 1.0f, 3);  // no launch for no elements
  CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("tensor cuda: CPU -> GPU -> CPU round trips keep every bit") {
  MIL_GPU_TEST_GUARD();
  auto f = Tensor<float, Cpu>::empty(Shape{3, 7, 5});
  rng::fill_normal(f, 0.0f, 1.0f, 21);
  auto back = f.to<Cuda>().to<Cpu>();
  CHECK(back.shape() == f.shape());
  CHECK(back.to_vector() == f.to_vector());

  std::vector<bf16> bv(1001);
  std::vector<fp16> hv(1001);
  std::vector<double> dv(1001);
  std::vector<int32_t> iv(1001);
  for (size_t i = 0; i < bv.size(); ++i) {
    bv[i] = bf16::from_bits(uint16_t(i * 2654435761u));
    hv[i] = fp16::from_bits(uint16_t(i * 40503u));
    dv[i] = double(i) * 1e-3 - 0.5;
    iv[i] = int32_t(i * 7919) - 3000000;
  }
  auto bb = test::to_gpu(bv).to_vector();
  auto hb = test::to_gpu(hv).to_vector();
  for (size_t i = 0; i < bv.size(); ++i) {
    REQUIRE(bb[i].bits == bv[i].bits);  // raw bits, NaN patterns included
    REQUIRE(hb[i].bits == hv[i].bits);
  }
  CHECK(test::to_gpu(dv).to_vector() == dv);
  CHECK(test::to_gpu(iv).to_vector() == iv);

  // GPU -> GPU copies and clones are deep copies.
  auto g = test::to_gpu(iv);
  auto c = g.clone();
  CHECK(!c.shares_storage_with(g));
  auto other = Tensor<int32_t, Cuda>::empty(g.shape());
  other.copy_from(c);
  c.zero_();
  CHECK(other.to_vector() == iv);
  CHECK(c.to_vector() == std::vector<int32_t>(iv.size(), 0));
  CHECK(g.to_vector() == iv);

  // Empty tensors copy without touching the device.
  auto e = Tensor<float, Cpu>::empty(Shape{0, 4});
  CHECK(e.to<Cuda>().to<Cpu>().numel() == 0);
  CHECK_THROWS_AS(other.copy_from(Tensor<int32_t, Cpu>::empty(Shape{3})), Error);
}

TEST_CASE("tensor cuda: view and slice share GPU storage") {
  MIL_GPU_TEST_GUARD();
  std::vector<float> v(6 * 5);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i);
  auto t = Tensor<float, Cuda>::from(Shape{6, 5}, v);
  auto rows = t.slice(2, 4);
  CHECK(rows.shares_storage_with(t));
  CHECK(rows.shape() == Shape{2, 5});
  CHECK(rows.data() == t.data() + 10);
  CHECK(rows.to_vector() == std::vector<float>(v.begin() + 10, v.begin() + 20));
  auto flat = rows.view(Shape{10});
  CHECK(flat.data() == rows.data());

  // Writes through a slice land in the parent, and only there.
  flat.copy_from(Tensor<float, Cpu>::from(Shape{10}, std::vector<float>(10, -1.0f)));
  t.slice(5, 6).zero_();
  std::vector<float> want = v;
  for (size_t i = 10; i < 20; ++i) want[i] = -1.0f;
  for (size_t i = 25; i < 30; ++i) want[i] = 0.0f;
  CHECK(t.to_vector() == want);
  // A GPU fill into a slice writes that slice's elements only.
  auto mid = t.slice(1, 2);
  rng::fill_uniform(mid, 0.0f, 1.0f, 8);
  std::vector<float> after = t.to_vector();
  for (size_t i = 0; i < after.size(); ++i) {
    if (i >= 5 && i < 10) {
      CHECK(after[i] == rng::uniform(8, 0, i - 5, 0.0f, 1.0f));
    } else {
      CHECK(after[i] == want[i]);
    }
  }
  CHECK_THROWS_AS(t.slice(4, 7), Error);
  CHECK_THROWS_AS(t.view(Shape{31}), Error);
}

TEST_CASE("allocator: freed GPU blocks are reused without new cudaMalloc calls") {
  MIL_GPU_TEST_GUARD();
  ScopedStream scoped;  // a stream of our own...
  auto& alloc = cuda::CachingAllocator::instance();
  alloc.release_cached();  // ...and no blocks cached under a reused stream handle
  const size_t sizes[] = {1, 100, 5000, 70000, size_t(1) << 20, 3 * (size_t(1) << 20) + 5};

  auto cycle = [&] {
    std::vector<void*> blocks;
    for (size_t s : sizes) blocks.push_back(alloc.allocate(s, scoped.stream));
    for (void* p : blocks) alloc.deallocate(p);
    return blocks;
  };
  const cuda::AllocatorStats start = alloc.stats();
  std::vector<void*> first = cycle();
  const cuda::AllocatorStats warm = alloc.stats();
  CHECK(warm.cuda_malloc_calls == start.cuda_malloc_calls + std::size(sizes));
  CHECK(warm.bytes_in_use == start.bytes_in_use);
  for (int i = 0; i < 100; ++i) {
    std::vector<void*> again = cycle();
    if (i == 0) CHECK(again == first);  // the same block for the same size
  }
  const cuda::AllocatorStats end = alloc.stats();
  CHECK(end.cuda_malloc_calls == warm.cuda_malloc_calls);
  CHECK(end.bytes_in_use == start.bytes_in_use);
  CHECK(end.bytes_reserved == warm.bytes_reserved);

  // Tensors go through the same cache: a freed tensor's memory serves the next one.
  const void* p = nullptr;
  size_t calls = 0;
  {
    auto t = Tensor<float, Cuda>::empty(Shape{1000});
    p = t.data();
    calls = alloc.stats().cuda_malloc_calls;
    CHECK(alloc.stats().bytes_in_use > end.bytes_in_use);
  }
  CHECK(alloc.stats().bytes_in_use == end.bytes_in_use);
  auto u = Tensor<float, Cuda>::empty(Shape{1000});
  CHECK(u.data() == p);
  CHECK(alloc.stats().cuda_malloc_calls == calls);

  // Returning the cache to the driver leaves reserved exactly what is in use.
  alloc.release_cached();
  CHECK(alloc.stats().bytes_reserved == alloc.stats().bytes_in_use);
  CHECK(alloc.stats().bytes_in_use > 0);
}

TEST_CASE("cuda check: failed calls throw mil::Error naming the call and the error") {
  MIL_GPU_TEST_GUARD();
  // An invalid device number fails without touching the context (no sticky error).
  try {
    MIL_CUDA_CHECK(cudaSetDevice(9999));
    FAIL("cudaSetDevice(9999) did not throw");
  } catch (const Error& e) {
    std::string what = e.what();
    INFO(what);
    CHECK(what.find("cudaSetDevice(9999)") != std::string::npos);
    CHECK(what.find("cudaErrorInvalidDevice") != std::string::npos);
    CHECK(what.find("test_core_cuda.cu") != std::string::npos);  // where it happened
  }
  (void)cudaGetLastError();  // the failed call is also the runtime's last error: clear it

  // A launch with too many threads per block is a launch error, reported with the kernel's name.
  float* dummy = nullptr;
  cuda::fill_normal_kernel<float><<<1, 4096, 0, cuda::current_stream()>>>(dummy, 1, 0, 1, 0, 0);
  try {
    MIL_CUDA_CHECK_LAUNCH("fill_normal_kernel (probe)");
    FAIL("a launch with 4096 threads per block did not throw");
  } catch (const Error& e) {
    std::string what = e.what();
    INFO(what);
    CHECK(what.find("fill_normal_kernel (probe)") != std::string::npos);
  }
  CHECK(cudaGetLastError() == cudaSuccess);  // reading the launch error cleared it

  try {
    MIL_CUBLAS_CHECK(cublasStatus_t(CUBLAS_STATUS_INVALID_VALUE));
    FAIL("a failed cuBLAS status did not throw");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("CUBLAS_STATUS_INVALID_VALUE") != std::string::npos);
  }

  // The device still works afterwards.
  std::vector<float> v = {1.0f, 2.0f, 3.0f};
  CHECK(test::to_gpu(v).to_vector() == v);
}
