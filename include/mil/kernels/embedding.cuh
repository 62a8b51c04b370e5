#pragma once
// Token embedding on the GPU, for float and bf16 tables (CPU reference and semantics in
// embedding.hpp).
//
// Token ids are validated on the host by the autograd layer; a GPU kernel cannot throw, so an id
// outside [0, vocab) never reads or writes out of bounds here: the forward writes a zero row for
// it and the backward skips it.
//
// Backward, deterministic: the positions are sorted by token id with a stable radix sort (CUB), so
// each distinct id owns one run of positions in increasing order. One block per run (and slice of
// channels) sums the run's dout rows in fp32, in that order, and writes each element of the
// table's gradient once. No atomics, so two runs give bitwise equal results, and rows of
// frequent tokens are never rounded to bf16 between additions.
//
// CUB (like cooperative_groups) declares a global namespace ::cuda: code that says
// `using namespace mil;` must spell mil::cuda:: after including this header.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <cub/device/device_radix_sort.cuh>

#include "../core/allocator.hpp"
#include "../core/cuda_check.hpp"
#include "../core/cuda_launch.hpp"
#include "../core/cuda_vec.cuh"
#include "../core/dtype.hpp"
#include "../core/error.hpp"

#if !MIL_CUDA_ENABLED
#error "mil/kernels/embedding.cuh needs a CUDA build (MIL_CUDA_ENABLED=1)"
#endif

namespace mil::cuda {
namespace detail {

// Device memory for one launcher call, returned to the caching allocator on `stream`, so that only
// work ordered after this call on that stream can reuse it.
struct EmbeddingScratch {
  void* ptr;
  EmbeddingScratch(size_t bytes, cudaStream_t stream)
      : ptr(CachingAllocator::instance().allocate(bytes, stream)) {}
  ~EmbeddingScratch() { CachingAllocator::instance().deallocate(ptr); }
  EmbeddingScratch(const EmbeddingScratch&) = delete;
  EmbeddingScratch& operator=(const EmbeddingScratch&) = delete;
};

// Copies rows in units of U: uint4 (16 bytes) when the row length and pointers allow, else T.
template <class U>
__global__ void embedding_forward_kernel(U* out, const U* table, const int32_t* ids, int64_t n,
                                         int64_t units_per_row, int64_t vocab) {
  const int64_t total = n * units_per_row;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    int64_t row = i / units_per_row;
    int64_t unit = i - row * units_per_row;
    int64_t id = ids[row];
    out[i] = (id >= 0 && id < vocab) ? table[id * units_per_row + unit] : U{};
  }
}

// Sort keys: the id, or vocab (sorts after every valid id) when it is out of range.
template <class Id>
__global__ void embedding_sort_keys_kernel(uint32_t* keys, int32_t* positions, const Id* ids,
                                           int64_t n, int64_t vocab) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t id = ids[i];
    keys[i] = uint32_t(id >= 0 && id < vocab ? id : vocab);
    positions[i] = int32_t(i);
  }
}

// Block (x, y): the run of sorted positions starting at x, if x starts a run of a valid id;
// channels y*blockDim.x + threadIdx.x, stepping by gridDim.y*blockDim.x.
template <class T>
__global__ void embedding_backward_runs_kernel(T* dtable, const T* dout, const uint32_t* keys,
                                               const int32_t* positions, int64_t n, int64_t dim,
                                               int64_t vocab, bool accumulate) {
  const int64_t start = blockIdx.x;
  const uint32_t id = keys[start];
  if (int64_t(id) >= vocab) return;                // out-of-range ids: skipped
  if (start > 0 && keys[start - 1] == id) return;  // not the first position of its run
  // End of the run: keys equal to id form a prefix of each chunk of the sorted keys, so the
  // count of matches in a chunk is the run's length within it.
  int64_t end = start + 1;
  for (;;) {
    int64_t j = end + threadIdx.x;
    int same = __syncthreads_count(j < n && keys[j] == id);
    end += same;
    if (same < int(blockDim.x)) break;
  }
  const int64_t step = int64_t(gridDim.y) * blockDim.x;
  for (int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; c < dim; c += step) {
    float sum = 0.f;
#pragma unroll 4
    for (int64_t j = start; j < end; ++j) sum += float(dout[int64_t(positions[j]) * dim + c]);
    T* dst = dtable + int64_t(id) * dim + c;
    *dst = accumulate ? T(float(*dst) + sum) : T(sum);
  }
}

inline void check_embedding_sizes(int64_t n, int64_t dim, int64_t vocab) {
  MIL_CHECK(n >= 0 && dim >= 0 && vocab >= 0, "embedding: negative size n=", n, " dim=", dim,
            " vocab=", vocab);
  MIL_CHECK(
      n <= std::numeric_limits<int32_t>::max() && vocab <= std::numeric_limits<int32_t>::max(),
      "embedding: n=", n, " and vocab=", vocab, " must fit in int32");
  (void)checked_mul(n, dim);
  (void)checked_mul(vocab, dim);
}

}  // namespace detail

// out (n, dim) = rows ids of table (vocab, dim); an id outside [0, vocab) gives a zero row.
template <class T>
void embedding_forward(T* out, const T* table, const int32_t* ids, int64_t n, int64_t dim,
                       int64_t vocab, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "cuda::embedding_forward runs in float or bf16");
  detail::check_embedding_sizes(n, dim, vocab);
  if (n == 0 || dim == 0) return;
  constexpr int threads = 256;
  const bool vector = dim % kVec<T> == 0 && aligned16(out) && aligned16(table);
  if (vector) {
    const int64_t units = dim * int64_t(sizeof(T)) / 16;
    detail::embedding_forward_kernel<uint4>
        <<<grid_stride_blocks(n * units, threads, 65535), threads, 0, stream>>>(
            reinterpret_cast<uint4*>(out), reinterpret_cast<const uint4*>(table), ids, n, units,
            vocab);
  } else {
    detail::embedding_forward_kernel<T>
        <<<grid_stride_blocks(n * dim, threads, 65535), threads, 0, stream>>>(out, table, ids, n,
                                                                               dim, vocab);
  }
  MIL_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

// dtable (vocab, dim) (+)= sum of the dout rows of each id; accumulate = false overwrites all of
// dtable (rows no token hits become 0). Ids outside [0, vocab) contribute nothing.
template <class T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t dim,
                        int64_t vocab, bool accumulate, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "cuda::embedding_backward runs in float or bf16");
  detail::check_embedding_sizes(n, dim, vocab);
  if (vocab == 0 || dim == 0) return;
  if (!accumulate)
    MIL_CUDA_CHECK(cudaMemsetAsync(dtable, 0, size_t(vocab * dim) * sizeof(T), stream));
  if (n == 0) return;

  const int count = int(n);
  const int end_bit = std::max(1, int(std::bit_width(uint32_t(vocab))));  // keys are <= vocab
  size_t sort_bytes = 0;
  MIL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), count, 0, end_bit,
      stream));
  // One allocation: keys in/out, positions in/out (256-byte aligned each), then CUB's storage.
  const size_t array_bytes = (size_t(n) * 4 + 255) / 256 * 256;
  detail::EmbeddingScratch scratch(4 * array_bytes + sort_bytes, stream);
  char* base = static_cast<char*>(scratch.ptr);
  auto* keys_in = reinterpret_cast<uint32_t*>(base);
  auto* keys_out = reinterpret_cast<uint32_t*>(base + array_bytes);
  auto* pos_in = reinterpret_cast<int32_t*>(base + 2 * array_bytes);
  auto* pos_out = reinterpret_cast<int32_t*>(base + 3 * array_bytes);
  void* sort_storage = base + 4 * array_bytes;

  constexpr int threads = 256;
  detail::embedding_sort_keys_kernel<int32_t>
      <<<grid_stride_blocks(n, threads, 65535), threads, 0, stream>>>(keys_in, pos_in, ids, n,
                                                                       vocab);
  MIL_CUDA_CHECK_LAUNCH("embedding_sort_keys_kernel");
  MIL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_storage, sort_bytes, keys_in, keys_out,
                                                 pos_in, pos_out, count, 0, end_bit, stream));

  constexpr int run_threads = 128;
  dim3 grid(unsigned(n), unsigned(std::min<int64_t>((dim + run_threads - 1) / run_threads, 65535)));
  detail::embedding_backward_runs_kernel<T><<<grid, run_threads, 0, stream>>>(
      dtable, dout, keys_out, pos_out, n, dim, vocab, accumulate);
  MIL_CUDA_CHECK_LAUNCH("embedding_backward_runs_kernel");
}

}  // namespace mil::cuda
