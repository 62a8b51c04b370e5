#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include <mil/kernels/attention.cuh>
#include <mil/kernels/attention.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

struct AttentionCase {
  int64_t batch, seq, heads, kv_heads, head_dim;
  bool fused;   // q, k, v interleaved per token in one buffer, else three separate blocks
  int64_t pad;  // extra elements per token (a gap no kernel may write), a multiple of 8
};

// Where q, k and v (and dq, dk, dv) lie in one buffer of `total` elements.
struct QkvLayout {
  AttentionShape shape;
  int64_t q_off, k_off, v_off, total;
};

QkvLayout make_layout(const AttentionCase& c) {
  const int64_t qw = c.heads * c.head_dim, kw = c.kv_heads * c.head_dim;
  const int64_t tokens = c.batch * c.seq;
  const float scale = float(1.0 / std::sqrt(double(c.head_dim)));
  QkvLayout l;
  if (c.fused) {
    const int64_t stride = qw + 2 * kw + c.pad;
    l.shape =
        AttentionShape{c.batch, c.seq, c.heads, c.kv_heads, c.head_dim, stride, stride, scale};
    l.q_off = 0;
    l.k_off = qw;
    l.v_off = qw + kw;
    l.total = tokens * stride;
  } else {
    l.shape = AttentionShape{c.batch, c.seq,      c.heads, c.kv_heads, c.head_dim,
                             qw + c.pad, kw + c.pad, scale};
    l.q_off = 0;
    l.k_off = tokens * l.shape.q_stride;
    l.v_off = l.k_off + tokens * l.shape.kv_stride;
    l.total = l.v_off + tokens * l.shape.kv_stride;
  }
  return l;
}

// The elements of q (part 0), k (1) or v (2) in a layout's buffer, in [token][feature] order.
template <class T>
std::vector<double> gather(const std::vector<T>& buf, const QkvLayout& l, int part) {
  const AttentionShape& s = l.shape;
  const int64_t width = (part == 0 ? s.heads : s.kv_heads) * s.head_dim;
  const int64_t stride = part == 0 ? s.q_stride : s.kv_stride;
  const int64_t off = part == 0 ? l.q_off : part == 1 ? l.k_off : l.v_off;
  std::vector<double> r;
  r.reserve(size_t(s.batch * s.seq * width));
  for (int64_t t = 0; t < s.batch * s.seq; ++t)
    for (int64_t i = 0; i < width; ++i)
      r.push_back(double(to_acc(buf[size_t(off + t * stride + i)])));
  return r;
}

// Number of elements of buf outside q, k and v whose bits differ from `fill`.
size_t gaps_written(const std::vector<bf16>& buf, const QkvLayout& l, bf16 fill) {
  const AttentionShape& s = l.shape;
  std::vector<char> covered(buf.size(), 0);
  for (int64_t t = 0; t < s.batch * s.seq; ++t) {
    for (int64_t i = 0; i < s.heads * s.head_dim; ++i)
      covered[size_t(l.q_off + t * s.q_stride + i)] = 1;
    for (int64_t i = 0; i < s.kv_heads * s.head_dim; ++i) {
      covered[size_t(l.k_off + t * s.kv_stride + i)] = 1;
      covered[size_t(l.v_off + t * s.kv_stride + i)] = 1;
    }
  }
  size_t n = 0;
  for (size_t i = 0; i < buf.size(); ++i) n += !covered[i] && buf[i].bits != fill.bits;
  return n;
}

// Forward and backward on the GPU against the float CPU reference on the same bf16-rounded
// inputs; the backward reference uses the GPU's out and lse, so it checks the backward alone.
void check_against_cpu(const AttentionCase& c, uint64_t seed, bool accumulate) {
  CAPTURE(c.batch);
  CAPTURE(c.seq);
  CAPTURE(c.heads);
  CAPTURE(c.kv_heads);
  CAPTURE(c.head_dim);
  CAPTURE(c.fused);
  CAPTURE(c.pad);
  CAPTURE(accumulate);
  const QkvLayout l = make_layout(c);
  const AttentionShape& s = l.shape;
  const size_t n_out = size_t(c.batch * c.seq * c.heads * c.head_dim);
  const size_t n_lse = size_t(c.batch * c.heads * c.seq);
  cudaStream_t stream = cuda::current_stream();

  // Inputs (the gaps hold values too: a kernel that reads them would change its output).
  const auto in = test::representable<bf16>(size_t(l.total), seed, -2.f, 2.f);
  auto in_gpu = test::to_gpu(test::cast_vector<bf16>(in));
  const bf16* q = in_gpu.data() + l.q_off;
  const bf16* k = in_gpu.data() + l.k_off;
  const bf16* v = in_gpu.data() + l.v_off;

  std::vector<float> out_ref(n_out), lse_ref(n_lse);
  cpu::attention_forward(out_ref.data(), lse_ref.data(), in.data() + l.q_off, in.data() + l.k_off,
                         in.data() + l.v_off, s);
  auto out_gpu = test::poisoned_gpu<bf16>(n_out);
  auto lse_gpu = test::poisoned_gpu<float>(n_lse);
  cuda::attention_forward(out_gpu.data(), lse_gpu.data(), q, k, v, s, stream);
  const auto out = out_gpu.to_vector();
  const auto lse = lse_gpu.to_vector();
  test::require_close("attention cuda out", out, out_ref, 1e-2);
  test::require_close("attention cuda lse", lse, lse_ref, 1e-5);

  const auto dout = test::representable<bf16>(n_out, seed + 1);
  auto dout_gpu = test::to_gpu(test::cast_vector<bf16>(dout));
  const float prefill = 0.25f;
  const bf16 fill = accumulate ? bf16(prefill) : test::poison<bf16>();
  auto grad_gpu = test::to_gpu(std::vector<bf16>(size_t(l.total), fill));
  bf16* g = grad_gpu.data();
  cuda::attention_backward(g + l.q_off, g + l.k_off, g + l.v_off, dout_gpu.data(), q, k, v,
                           out_gpu.data(), lse_gpu.data(), s, accumulate, stream);
  const auto grad = grad_gpu.to_vector();

  const auto out_f = test::cast_vector<float>(out);
  std::vector<float> ref(size_t(l.total), accumulate ? prefill : 0.f);
  cpu::attention_backward(ref.data() + l.q_off, ref.data() + l.k_off, ref.data() + l.v_off,
                          dout.data(), in.data() + l.q_off, in.data() + l.k_off,
                          in.data() + l.v_off, out_f.data(), lse.data(), s, accumulate);
  test::require_close("attention cuda dq", gather(grad, l, 0), gather(ref, l, 0), 1e-2);
  test::require_close("attention cuda dk", gather(grad, l, 1), gather(ref, l, 1), 1e-2);
  test::require_close("attention cuda dv", gather(grad, l, 2), gather(ref, l, 2), 1e-2);
  CHECK(gaps_written(grad, l, fill) == 0);
}

void check_sizes(int64_t head_dim, uint64_t seed) {
  const int64_t seqs[] = {1, 17, 64, 65, 200};
  const int64_t heads[][2] = {{9, 3}, {4, 4}, {8, 1}};
  int i = 0;
  for (int64_t seq : seqs)
    for (const auto& hk : heads) {
      // Alternate batch 1 / 2, fused / separate and padding over the cases.
      AttentionCase c{1 + i % 2, seq, hk[0], hk[1], head_dim, i % 3 != 2, (i % 4 == 3) ? 8 : 0};
      check_against_cpu(c, seed + 10 * uint64_t(i), false);
      ++i;
    }
}

}  // namespace

TEST_CASE("attention cuda: forward and backward match the CPU reference - head dim 64") {
  MIL_GPU_TEST_GUARD();
  check_sizes(64, 100);
}

TEST_CASE("attention cuda: forward and backward match the CPU reference - head dim 128") {
  MIL_GPU_TEST_GUARD();
  check_sizes(128, 200);
}

TEST_CASE("attention cuda: long sequence (1027 tokens - many tiles and a ragged tail)") {
  MIL_GPU_TEST_GUARD();
  check_against_cpu({2, 1027, 9, 3, 64, true, 0}, 300, false);
  check_against_cpu({1, 1027, 8, 1, 128, false, 8}, 310, false);
}

TEST_CASE("attention cuda: backward accumulate adds to pre-filled gradients - gaps untouched") {
  MIL_GPU_TEST_GUARD();
  check_against_cpu({2, 65, 9, 3, 64, true, 8}, 400, true);
  check_against_cpu({1, 130, 4, 4, 128, false, 0}, 410, true);
  check_against_cpu({2, 17, 8, 1, 128, true, 16}, 420, true);
}

TEST_CASE("attention cuda: forward and backward are deterministic (bitwise)") {
  MIL_GPU_TEST_GUARD();
  const QkvLayout l = make_layout({2, 200, 8, 1, 64, true, 0});
  const AttentionShape& s = l.shape;
  const size_t n_out = size_t(s.batch * s.seq * s.heads * s.head_dim);
  cudaStream_t stream = cuda::current_stream();
  auto in = test::to_gpu(test::random_vector<bf16>(size_t(l.total), 500, -2.f, 2.f));
  auto dout = test::to_gpu(test::random_vector<bf16>(n_out, 501));
  const bf16 *q = in.data() + l.q_off, *k = in.data() + l.k_off, *v = in.data() + l.v_off;
  auto out = test::poisoned_gpu<bf16>(n_out);
  auto lse = test::poisoned_gpu<float>(size_t(s.batch * s.heads * s.seq));
  cuda::attention_forward(out.data(), lse.data(), q, k, v, s, stream);
  auto out_no_lse = test::poisoned_gpu<bf16>(n_out);  // lse is optional in the forward pass
  cuda::attention_forward(out_no_lse.data(), nullptr, q, k, v, s, stream);
  const auto out_bits = out.to_vector(), out2_bits = out_no_lse.to_vector();
  CHECK(std::memcmp(out_bits.data(), out2_bits.data(), n_out * sizeof(bf16)) == 0);

  std::vector<std::vector<bf16>> runs;
  for (int r = 0; r < 2; ++r) {
    auto grad = test::poisoned_gpu<bf16>(size_t(l.total));
    bf16* g = grad.data();
    cuda::attention_backward(g + l.q_off, g + l.k_off, g + l.v_off, dout.data(), q, k, v,
                             out.data(), lse.data(), s, false, stream);
    runs.push_back(grad.to_vector());
  }
  CHECK(std::memcmp(runs[0].data(), runs[1].data(), runs[0].size() * sizeof(bf16)) == 0);
}

TEST_CASE("attention cuda: unsupported head dims and misaligned strides are errors") {
  // Validation happens before any CUDA call, so this runs without a GPU too.
  for (int64_t hd : {32, 96, 256}) {
    const AttentionShape s = attention_shape_fused(1, 8, 4, 2, hd);
    try {
      cuda::attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, s, nullptr);
      FAIL("head_dim ", hd, " was accepted");
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find("supported head dims: 64, 128") != std::string::npos);
    }
    CHECK_THROWS_AS(cuda::attention_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                             nullptr, nullptr, nullptr, s, false, nullptr),
                    Error);
  }
  AttentionShape s = attention_shape_fused(1, 8, 4, 2, 64);
  s.q_stride += 4;  // rows no longer 16-byte aligned
  CHECK_THROWS_AS(cuda::attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, s, nullptr),
                  Error);
  s = attention_shape_fused(1, 8, 4, 2, 64);
  s.heads = 6;
  s.kv_heads = 4;  // 6 heads over 4 kv heads
  CHECK_THROWS_AS(cuda::attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, s, nullptr),
                  Error);
}
