// SSD scan (Mamba-2) on the GPU against the CPU reference in double on the same T-representable
// inputs: forward and backward at lengths around the chunk (64), batch > 1, GQA ratios 1 and 3,
// x/B/C/dt packed or as column blocks of one fused buffer (strides that cp.async can and cannot
// read in place), gradient write modes and null gradients, states across calls (prefill split in
// two, prefill then decode steps), fast- and slow-decaying heads, unsupported sizes.
// The GPU runs its products on bf16 tensor cores for both element types, so float results are
// held to bf16-level tolerances too. Every forward check runs both forward algorithms (the
// sequential walk over the chunks and the chunk-parallel one, forced), whatever the automatic
// choice would be. require_close holds each result to a normalised bound and a per-element bound
// (8x the normalised one, relative to max(|ref_i|, rms(ref))): a wrong chunk among 32 shows in the
// element bound even where its share of the norm is small.
#include <doctest/doctest.h>

#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mil/kernels/ssd_scan.cuh>
#include <mil/kernels/ssd_scan.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

// Normalised-error tolerances: outputs and input gradients; the step-size and parameter
// gradients, which are differences of larger sums (more bf16 rounding shows).
constexpr double kTol = 1e-2, kTolDt = 2e-2;
// The final states of the two forward algorithms against each other: both sum the same bf16
// products in fp32, in another order (the chunk-parallel one adds a chunk's X^T (w B) to the
// decayed state after the product, the sequential one accumulates it onto it), so they agree to
// fp32 rounding over the chunks, far below the bf16-level kTol.
constexpr double kTolPaths = 1e-4;

using cuda::SsdForwardPath;
constexpr SsdForwardPath kPaths[] = {SsdForwardPath::sequential, SsdForwardPath::chunked};
const char* path_name(SsdForwardPath p) {
  return p == SsdForwardPath::chunked ? "chunk-parallel" : "sequential";
}

struct Case {
  int64_t batch, seq, heads, groups, dim;
  int pad;  // < 0: x, B, C, dt in separate packed buffers; else fused with `pad` spare columns
  // Small steps and slow decays (see make_inputs): a chunk's decay e^(L_last) of 0.25 to 0.95, so
  // that states carry over many chunks and a wrong decay in the pass over the chunks shows.
  bool long_memory = false;
};

// x, B, C and dt (and their gradients) in one host buffer `mem`: offsets and strides.
struct Layout {
  SsdShape s;
  int64_t xo = 0, bo = 0, co = 0, dto = 0, size = 0;
};

Layout make_layout(const Case& c) {
  Layout l;
  l.s.batch = c.batch, l.s.seq = c.seq, l.s.heads = c.heads, l.s.groups = c.groups;
  l.s.head_dim = c.dim, l.s.d_state = c.dim;
  const int64_t rows = c.batch * c.seq;
  const int64_t xw = c.groups * c.dim, bw = c.groups * c.dim, cw = c.heads * c.dim;
  if (c.pad < 0) {
    l.xo = 0, l.bo = rows * xw, l.co = l.bo + rows * bw, l.dto = l.co + rows * cw;
    l.size = l.dto + rows * c.heads;
  } else {
    const int64_t width = xw + bw + cw + c.heads + c.pad;
    l.s.x_stride = l.s.b_stride = l.s.c_stride = l.s.dt_stride = width;
    l.xo = 0, l.bo = xw, l.co = xw + bw, l.dto = xw + bw + cw;
    l.size = rows * width;
  }
  return l;
}

// Inputs as floats representable in T: the fused buffer, dt_bias, A_log, D.
struct Inputs {
  std::vector<float> mem, dt_bias, A_log, D;
};

template <class T>
Inputs make_inputs(const Layout& l, uint64_t seed, bool long_memory = false) {
  Inputs in;
  in.mem = test::representable<T>(size_t(l.size), seed, -1.f, 1.f);
  const SsdShape& s = l.s;
  // step sizes in a useful range: softplus(-3 .. 0.5 + bias) (a chunk's decay is mostly below
  // 0.02); long memory: softplus(-5.5 .. -3.5 + bias), about 0.001 to 0.05, with a = -e^A_log in
  // [-1, -0.14] (a chunk's decay about 0.25 to 0.95, as in trained models' long-memory heads)
  for (int64_t r = 0; r < s.batch * s.seq; ++r)
    for (int64_t h = 0; h < s.heads; ++h) {
      float& v = in.mem[size_t(l.dto + r * s.dts() + h)];
      v = long_memory ? float(T(-4.5f + v)) : float(T(-1.25f + 1.75f * v));
    }
  in.dt_bias = test::representable<T>(size_t(s.heads), seed + 1, -1.f, 0.5f);
  in.A_log = long_memory ? test::representable<T>(size_t(s.heads), seed + 2, -2.f, 0.f)
                         : test::representable<T>(size_t(s.heads), seed + 2, -1.f, 1.2f);
  in.D = test::representable<T>(size_t(s.heads), seed + 3, 0.5f, 1.5f);
  return in;
}

template <class T>
struct GpuInputs {
  Tensor<T, Cuda> mem, dt_bias, A_log, D;
  GpuInputs(const Inputs& in)
      : mem(test::to_gpu(test::cast_vector<T>(in.mem))),
        dt_bias(test::to_gpu(test::cast_vector<T>(in.dt_bias))),
        A_log(test::to_gpu(test::cast_vector<T>(in.A_log))),
        D(test::to_gpu(test::cast_vector<T>(in.D))) {}
};

template <class T>
void check_forward(const Case& c, uint64_t seed, bool with_d = true) {
  const Layout l = make_layout(c);
  const SsdShape& s = l.s;
  INFO("batch ", c.batch, " seq ", c.seq, " heads ", c.heads, " groups ", c.groups, " dim ", c.dim,
       " pad ", c.pad, " long memory ", c.long_memory, " ", test::type_name<T>());
  const Inputs in = make_inputs<T>(l, seed, c.long_memory);
  const int64_t ny = s.batch * s.seq * s.heads * s.head_dim;

  auto md = test::cast_vector<double>(in.mem);
  auto bd = test::cast_vector<double>(in.dt_bias), ad = test::cast_vector<double>(in.A_log),
       dd = test::cast_vector<double>(in.D);
  std::vector<double> y_ref(static_cast<size_t>(ny));
  cpu::ssd_scan_forward<double>(y_ref.data(), md.data() + l.xo, md.data() + l.bo,
                                md.data() + l.co, md.data() + l.dto, bd.data(), ad.data(),
                                with_d ? dd.data() : nullptr, s);

  GpuInputs<T> g(in);
  const T* m = g.mem.data();
  for (SsdForwardPath path : kPaths) {
    INFO("path ", path_name(path));
    auto y = test::poisoned_gpu<T>(size_t(ny));
    cuda::ssd_scan_forward<T>(y.data(), m + l.xo, m + l.bo, m + l.co, m + l.dto, g.dt_bias.data(),
                              g.A_log.data(), with_d ? g.D.data() : nullptr, s, SsdStates{},
                              nullptr, path);
    MIL_CUDA_CHECK(cudaDeviceSynchronize());
    test::require_close(std::string("ssd gpu forward y, ") + path_name(path), y.to_vector(), y_ref,
                        kTol);
  }
}

struct GradMode {
  bool accumulate_inputs, accumulate_params;
  bool dx = true, dB = true, dC = true, ddt = true, dbias = true, dA = true, dD = true;
};

template <class T>
void check_backward(const Case& c, const GradMode& gm, uint64_t seed) {
  const Layout l = make_layout(c);
  const SsdShape& s = l.s;
  INFO("batch ", c.batch, " seq ", c.seq, " heads ", c.heads, " groups ", c.groups, " dim ", c.dim,
       " pad ", c.pad, " accumulate ", gm.accumulate_inputs, "/", gm.accumulate_params, " ",
       test::type_name<T>());
  const Inputs in = make_inputs<T>(l, seed, c.long_memory);
  const int64_t ny = s.batch * s.seq * s.heads * s.head_dim;
  const auto dy = test::representable<T>(size_t(ny), seed + 10);
  // Gradient buffers pre-filled with non-zero values (kept where not written).
  const auto gmem0 = test::representable<T>(size_t(l.size), seed + 11);
  const auto gpar0 = test::representable<T>(size_t(3 * s.heads), seed + 12);

  auto md = test::cast_vector<double>(in.mem), dyd = test::cast_vector<double>(dy);
  auto bd = test::cast_vector<double>(in.dt_bias), ad = test::cast_vector<double>(in.A_log),
       dd = test::cast_vector<double>(in.D);
  auto gm_ref = test::cast_vector<double>(gmem0), gp_ref = test::cast_vector<double>(gpar0);
  SsdGrads<double> gr;
  double* gmr = gm_ref.data();
  gr.dx = gm.dx ? gmr + l.xo : nullptr;
  gr.dB = gm.dB ? gmr + l.bo : nullptr;
  gr.dC = gm.dC ? gmr + l.co : nullptr;
  gr.ddt = gm.ddt ? gmr + l.dto : nullptr;
  gr.ddt_bias = gm.dbias ? gp_ref.data() : nullptr;
  gr.dA_log = gm.dA ? gp_ref.data() + s.heads : nullptr;
  gr.dD = gm.dD ? gp_ref.data() + 2 * s.heads : nullptr;
  gr.accumulate_inputs = gm.accumulate_inputs, gr.accumulate_params = gm.accumulate_params;
  cpu::ssd_scan_backward<double>(gr, dyd.data(), md.data() + l.xo, md.data() + l.bo,
                                 md.data() + l.co, md.data() + l.dto, bd.data(), ad.data(),
                                 dd.data(), s);

  GpuInputs<T> g(in);
  auto dy_gpu = test::to_gpu(test::cast_vector<T>(dy));
  auto gmem = test::to_gpu(test::cast_vector<T>(gmem0));
  auto gpar = test::to_gpu(test::cast_vector<T>(gpar0));
  SsdGrads<T> gg;
  T* gmp = gmem.data();
  gg.dx = gm.dx ? gmp + l.xo : nullptr;
  gg.dB = gm.dB ? gmp + l.bo : nullptr;
  gg.dC = gm.dC ? gmp + l.co : nullptr;
  gg.ddt = gm.ddt ? gmp + l.dto : nullptr;
  gg.ddt_bias = gm.dbias ? gpar.data() : nullptr;
  gg.dA_log = gm.dA ? gpar.data() + s.heads : nullptr;
  gg.dD = gm.dD ? gpar.data() + 2 * s.heads : nullptr;
  gg.accumulate_inputs = gm.accumulate_inputs, gg.accumulate_params = gm.accumulate_params;
  const T* m = g.mem.data();
  cuda::ssd_scan_backward<T>(gg, dy_gpu.data(), m + l.xo, m + l.bo, m + l.co, m + l.dto,
                             g.dt_bias.data(), g.A_log.data(), g.D.data(), s, nullptr);
  MIL_CUDA_CHECK(cudaDeviceSynchronize());

  const auto gmem_out = gmem.to_vector();
  const auto gpar_out = gpar.to_vector();
  // Each gradient separately (its own region of the buffer, element by element through the
  // strides), then the whole buffer bitwise where nothing may be written.
  const int64_t rows = s.batch * s.seq;
  auto gather = [&](const auto& v, int64_t off, int64_t stride, int64_t width) {
    std::vector<double> r;
    for (int64_t row = 0; row < rows; ++row)
      for (int64_t i = 0; i < width; ++i) r.push_back(double(to_acc(v[size_t(off + row * stride + i)])));
    return r;
  };
  const int64_t P = s.head_dim, N = s.d_state;
  if (gm.dx)
    test::require_close("ssd gpu dx", gather(gmem_out, l.xo, s.xs(), s.groups * P),
                        gather(gm_ref, l.xo, s.xs(), s.groups * P), kTol);
  if (gm.dB)
    test::require_close("ssd gpu dB", gather(gmem_out, l.bo, s.bs(), s.groups * N),
                        gather(gm_ref, l.bo, s.bs(), s.groups * N), kTol);
  if (gm.dC)
    test::require_close("ssd gpu dC", gather(gmem_out, l.co, s.cs(), s.heads * N),
                        gather(gm_ref, l.co, s.cs(), s.heads * N), kTol);
  if (gm.ddt)
    test::require_close("ssd gpu ddt", gather(gmem_out, l.dto, s.dts(), s.heads),
                        gather(gm_ref, l.dto, s.dts(), s.heads), kTolDt);
  const bool par[3] = {gm.dbias, gm.dA, gm.dD};
  const char* par_name[3] = {"ssd gpu ddt_bias", "ssd gpu dA_log", "ssd gpu dD"};
  for (int k = 0; k < 3; ++k) {
    std::vector<T> out(gpar_out.begin() + k * s.heads, gpar_out.begin() + (k + 1) * s.heads);
    std::vector<double> ref(gp_ref.begin() + k * s.heads, gp_ref.begin() + (k + 1) * s.heads);
    if (par[k]) test::require_close(par_name[k], out, ref, kTolDt);
  }
  // Where the CPU wrote nothing (null gradients, spare columns), the GPU wrote nothing either.
  std::vector<T> gm_ref_t = test::cast_vector<T>(gmem0);
  size_t differ = 0;
  for (size_t i = 0; i < gm_ref.size(); ++i)
    if (gm_ref[i] == double(to_acc(gm_ref_t[i])) &&
        std::memcmp(&gmem_out[i], &gm_ref_t[i], sizeof(T)) != 0)
      ++differ;
  CHECK(differ == 0);
  for (int k = 0; k < 3; ++k)
    if (!par[k])
      for (int64_t h = 0; h < s.heads; ++h)
        CHECK(std::memcmp(&gpar_out[size_t(k * s.heads + h)],
                          &test::cast_vector<T>(gpar0)[size_t(k * s.heads + h)], sizeof(T)) == 0);
}

// The forward over [0, seq) from random initial states in one call, against the same in the
// pieces `splits` (seq = 1 pieces take the decode kernel); both against the CPU.
template <class T>
void check_states(const Case& c, const std::vector<int64_t>& splits, uint64_t seed) {
  const Layout l = make_layout(c);
  const SsdShape& s = l.s;
  INFO("batch ", c.batch, " seq ", c.seq, " heads ", c.heads, " groups ", c.groups, " dim ", c.dim,
       " pieces ", splits.size(), " long memory ", c.long_memory, " ", test::type_name<T>());
  const Inputs in = make_inputs<T>(l, seed, c.long_memory);
  const int64_t P = s.head_dim, ny = s.batch * s.seq * s.heads * P;
  const int64_t n_slots = s.batch + 1, per_slot = s.state_size();
  std::vector<int32_t> slots(static_cast<size_t>(s.batch));
  for (int64_t b = 0; b < s.batch; ++b) slots[size_t(b)] = int32_t(s.batch - b);  // slot 0 unused
  const auto st0 = test::random_vector<float>(size_t(n_slots * per_slot), seed + 20, -0.5f, 0.5f);

  // CPU, one call.
  auto md = test::cast_vector<double>(in.mem);
  auto bd = test::cast_vector<double>(in.dt_bias), ad = test::cast_vector<double>(in.A_log),
       dd = test::cast_vector<double>(in.D);
  std::vector<double> y_ref(static_cast<size_t>(ny));
  std::vector<float> st_ref = st0;
  cpu::ssd_scan_forward<double>(y_ref.data(), md.data() + l.xo, md.data() + l.bo,
                                md.data() + l.co, md.data() + l.dto, bd.data(), ad.data(),
                                dd.data(), s, SsdStates{st_ref.data(), n_slots, slots.data()});

  // GPU: the whole sequence at once, and in pieces. A piece of tokens [t0, t1) of every sequence
  // is a copy of those rows (sequences are consecutive rows of the buffer).
  GpuInputs<T> g(in);
  auto slots_gpu = test::to_gpu(slots);
  auto run = [&](const std::vector<int64_t>& pieces, Tensor<float, Cuda>& st, SsdForwardPath path) {
    std::vector<T> y_all(static_cast<size_t>(ny));
    const auto mem_t = test::cast_vector<T>(in.mem);
    int64_t t0 = 0;
    for (int64_t len : pieces) {
      Case pc = c;
      pc.seq = len;
      const Layout pl = make_layout(pc);
      std::vector<T> piece(size_t(pl.size), T(0.f));
      auto copy_block = [&](int64_t off, int64_t poff, int64_t stride, int64_t pstride,
                            int64_t width) {
        for (int64_t b = 0; b < s.batch; ++b)
          for (int64_t t = 0; t < len; ++t)
            for (int64_t i = 0; i < width; ++i)
              piece[size_t(poff + (b * len + t) * pstride + i)] =
                  mem_t[size_t(off + (b * s.seq + t0 + t) * stride + i)];
      };
      copy_block(l.xo, pl.xo, s.xs(), pl.s.xs(), s.groups * P);
      copy_block(l.bo, pl.bo, s.bs(), pl.s.bs(), s.groups * s.d_state);
      copy_block(l.co, pl.co, s.cs(), pl.s.cs(), s.heads * s.d_state);
      copy_block(l.dto, pl.dto, s.dts(), pl.s.dts(), s.heads);
      auto piece_gpu = test::to_gpu(piece);
      auto y = test::poisoned_gpu<T>(size_t(s.batch * len * s.heads * P));
      const T* m = piece_gpu.data();
      cuda::ssd_scan_forward<T>(y.data(), m + pl.xo, m + pl.bo, m + pl.co, m + pl.dto,
                                g.dt_bias.data(), g.A_log.data(), g.D.data(), pl.s,
                                SsdStates{st.data(), n_slots, slots_gpu.data()}, nullptr, path);
      const auto yv = y.to_vector();
      for (int64_t b = 0; b < s.batch; ++b)
        for (int64_t t = 0; t < len; ++t)
          for (int64_t i = 0; i < s.heads * P; ++i)
            y_all[size_t((b * s.seq + t0 + t) * s.heads * P + i)] =
                yv[size_t((b * len + t) * s.heads * P + i)];
      t0 += len;
    }
    REQUIRE(t0 == s.seq);
    return y_all;
  };
  std::vector<float> final_one[2], final_pieces[2];  // per path, in kPaths' order
  for (int k = 0; k < 2; ++k) {
    const SsdForwardPath path = kPaths[k];
    INFO("path ", path_name(path));
    const std::string tag = std::string(", ") + path_name(path);
    auto st_one = test::to_gpu(st0), st_pieces = test::to_gpu(st0);
    const auto y_one = run({s.seq}, st_one, path);
    const auto y_pieces = run(splits, st_pieces, path);
    MIL_CUDA_CHECK(cudaDeviceSynchronize());
    // y from a carried state: a start state that misses the slot's state, or an off-diagonal
    // term e^(L_t) C S_start^T that is dropped or reads the wrong chunk, fails here (every chunk,
    // the first included, has a nonzero start state)
    test::require_close("ssd gpu states: one call y" + tag, y_one, y_ref, kTol);
    test::require_close("ssd gpu states: pieces y" + tag, y_pieces, y_ref, kTol);
    const auto so = st_one.to_vector(), sp = st_pieces.to_vector();
    // the final state: not written back to the slot, written from the wrong chunk, or missing
    // the decay of the chunks before it, fails here
    test::require_close("ssd gpu states: one call final state" + tag, so, st_ref, kTol);
    test::require_close("ssd gpu states: pieces final state" + tag, sp, st_ref, kTol);
    test::require_close("ssd gpu states: pieces equal one call" + tag, y_pieces, y_one, kTol);
    // slot 0 belongs to no row: untouched
    CHECK(std::memcmp(so.data(), st0.data(), size_t(per_slot) * sizeof(float)) == 0);
    CHECK(std::memcmp(sp.data(), st0.data(), size_t(per_slot) * sizeof(float)) == 0);
    final_one[k] = so, final_pieces[k] = sp;
  }
  // The chunk-parallel final states equal the sequential ones to fp32 rounding (the state the
  // decoder continues from after a prefill does not depend on the algorithm that computed it).
  // The tightest check of the pass over the chunks: a decay taken from the wrong chunk (decay[c]
  // for decay[c - 1]), whose effect on y can hide within kTol where chunks decay to ~0, changes
  // the final state by far more than 1e-4.
  test::require_close("ssd gpu states: chunk-parallel final state equals sequential, one call",
                      final_one[1], final_one[0], kTolPaths);
  test::require_close("ssd gpu states: chunk-parallel final state equals sequential, pieces",
                      final_pieces[1], final_pieces[0], kTolPaths);
}

}  // namespace

TEST_CASE("ssd scan: gpu forward matches the cpu around the chunk length") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 100;
  // (batch, seq, heads, groups, dim, pad): seq < chunk, = chunk, not a multiple, several chunks
  for (const Case& c : {Case{1, 1, 3, 1, 64, -1}, Case{1, 37, 3, 1, 64, -1},
                        Case{2, 64, 9, 3, 64, -1}, Case{2, 65, 6, 6, 64, -1},
                        Case{3, 200, 9, 3, 64, -1}, Case{2, 130, 4, 4, 128, -1},
                        Case{1, 129, 6, 2, 128, -1}, Case{2, 77, 6, 2, 32, -1},
                        Case{2, 150, 3, 1, 16, -1}}) {
    check_forward<bf16>(c, seed);
    check_forward<float>(c, seed + 1);
    seed += 10;
  }
}

// One sequence (batch-1 prefill, 9 SmolLM2 heads: the shape the chunk-parallel path exists for)
// at lengths around the chunk and long: a chunk and a token short, one chunk, one token into a
// second chunk (a one-token last chunk: its decay and local state come from one row), several
// chunks with a partial last one, and 32 chunks. Without states the first chunk starts from zero,
// so these catch (from 65 tokens on) a dropped or misplaced off-diagonal term, and (from 129 on,
// where a start state holds two chunks) a state pass that skips the decay e^(L_last). (A decay
// that counts the padding rows of a partial last chunk shows in the final states of the states
// test below, whose pieces end in partial chunks.)
TEST_CASE("ssd scan: gpu forward of one sequence, both algorithms, up to 2048 tokens") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 200;
  for (int64_t seq : {1, 63, 64, 65, 200, 2048}) {
    check_forward<bf16>({1, seq, 9, 3, 64, -1}, seed);
    check_forward<float>({1, seq, 9, 3, 64, -1}, seed + 1);
    seed += 10;
  }
  // 32 chunks of the L head size (128) and of the small ones
  check_forward<bf16>({1, 2048, 4, 1, 128, -1}, 260);
  check_forward<bf16>({1, 1000, 6, 2, 32, -1}, 270);
  check_forward<bf16>({1, 700, 3, 3, 16, -1}, 280);
  // long memory: every start state carries the chunks before the previous one too
  check_forward<bf16>({1, 2048, 9, 3, 64, -1, true}, 290);
  check_forward<float>({2, 300, 6, 2, 64, 3, true}, 300);
  check_forward<bf16>({1, 520, 4, 4, 128, -1, true}, 310);
}

// The automatic choice: the chunk-parallel path for a batch-1 prefill of several chunks, the
// sequential one when batch * heads blocks take more than half the SMs (training shapes) or for
// one chunk. Catches a dispatch that never (or always) takes the new path.
TEST_CASE("ssd scan: gpu forward chooses the chunk-parallel path when blocks are few") {
  MIL_GPU_TEST_GUARD();
  using cuda::ssd_detail::use_chunk_parallel;
  auto shape = [](int64_t batch, int64_t seq) {
    SsdShape s;
    s.batch = batch, s.seq = seq, s.heads = 9, s.groups = 3, s.head_dim = 64, s.d_state = 64;
    return s;
  };
  const auto aut = SsdForwardPath::automatic;
  CHECK(use_chunk_parallel(shape(1, 2048), aut, nullptr));
  CHECK(use_chunk_parallel(shape(1, 65), aut, nullptr));
  CHECK_FALSE(use_chunk_parallel(shape(1, 64), aut, nullptr));
  // (sequence, head) blocks for at most half the SMs, and for more (7 and 8 sequences on an H100)
  const int64_t half = cuda::sm_count() / 18;
  if (half >= 1) CHECK(use_chunk_parallel(shape(half, 1024), aut, nullptr));
  CHECK_FALSE(use_chunk_parallel(shape(half + 1, 1024), aut, nullptr));
  // the training shape S, 16 x 1024 (144 blocks)
  CHECK_FALSE(use_chunk_parallel(shape(16, 1024), aut, nullptr));
  CHECK(use_chunk_parallel(shape(16, 1024), SsdForwardPath::chunked, nullptr));
  CHECK_FALSE(use_chunk_parallel(shape(1, 2048), SsdForwardPath::sequential, nullptr));
}

TEST_CASE("ssd scan: gpu forward reads x B C dt as column blocks of one fused buffer") {
  MIL_GPU_TEST_GUARD();
  // pad 3: strides cp.async cannot read in place (packed copies); pad 7 with 9 heads (width 976,
  // a multiple of 8): read in place with strides
  check_forward<bf16>({2, 100, 9, 3, 64, 3}, 300);
  check_forward<bf16>({2, 100, 9, 3, 64, 7}, 310);
  check_forward<bf16>({1, 140, 8, 2, 128, 0}, 320);
  check_forward<float>({2, 70, 6, 2, 32, 3}, 330);
  check_forward<bf16>({2, 90, 6, 2, 64, -1}, 340, /*with_d=*/false);  // no D skip
}

TEST_CASE("ssd scan: gpu backward matches the cpu with write modes") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 1000;
  int mode = 0;
  for (const Case& c : {Case{1, 37, 3, 1, 64, -1}, Case{2, 64, 9, 3, 64, -1},
                        Case{2, 150, 6, 2, 64, 3}, Case{2, 130, 4, 4, 128, -1},
                        Case{1, 100, 6, 2, 128, 2}, Case{2, 100, 9, 3, 64, 7},
                        Case{2, 77, 6, 2, 32, 5},
                        Case{1, 90, 3, 3, 16, -1}}) {
    GradMode gm{(mode & 1) != 0, (mode & 2) != 0};
    check_backward<bf16>(c, gm, seed);
    check_backward<float>(c, GradMode{!gm.accumulate_inputs, !gm.accumulate_params}, seed + 1);
    seed += 10;
    ++mode;
  }
}

TEST_CASE("ssd scan: gpu backward leaves null gradients alone") {
  MIL_GPU_TEST_GUARD();
  GradMode only_inputs{false, true};
  only_inputs.dbias = only_inputs.dA = only_inputs.dD = false;
  only_inputs.dB = false;
  check_backward<bf16>({2, 100, 9, 3, 64, 3}, only_inputs, 2000);
  GradMode only_params{true, false};
  only_params.dx = only_params.dB = only_params.dC = only_params.ddt = false;
  check_backward<bf16>({2, 100, 9, 3, 64, -1}, only_params, 2010);
  GradMode mixed{true, true};
  mixed.dx = mixed.dD = false;
  check_backward<float>({1, 70, 4, 1, 64, 3}, mixed, 2020);
}

TEST_CASE("ssd scan: gpu states carry a sequence across calls") {
  MIL_GPU_TEST_GUARD();
  // a prefill split in two equals one call
  check_states<bf16>({2, 100, 9, 3, 64, -1}, {37, 63}, 3000);
  check_states<bf16>({1, 150, 4, 4, 128, 3}, {64, 86}, 3010);
  check_states<float>({2, 40, 6, 2, 32, -1}, {10, 30}, 3020);
  // chunked scan equals the step-by-step recurrence: a prefill, then decode steps of one token
  check_states<bf16>({2, 75, 9, 3, 64, -1}, {70, 1, 1, 1, 1, 1}, 3030);
  check_states<bf16>({3, 8, 8, 2, 128, 3}, {1, 1, 1, 1, 1, 1, 1, 1}, 3040);
  check_states<float>({2, 20, 6, 2, 16, -1}, {5, 1, 1, 13}, 3050);
  // a batch-1 prefill of 2048 tokens in one call and in two (the second from the carried state,
  // neither a multiple of the chunk), then a long prefill with a fused-buffer layout
  check_states<bf16>({1, 2048, 9, 3, 64, -1}, {1000, 1048}, 3060);
  check_states<bf16>({1, 200, 9, 3, 64, 7}, {65, 135}, 3070);
  check_states<float>({2, 300, 6, 2, 64, 3}, {129, 171}, 3080);
  check_states<bf16>({1, 1000, 9, 3, 64, -1, true}, {300, 700}, 3090);
  check_states<bf16>({2, 260, 6, 6, 32, -1, true}, {128, 132}, 3100);
}

TEST_CASE("ssd scan: gpu rejects unsupported sizes") {
  MIL_GPU_TEST_GUARD();
  auto x = Tensor<bf16, Cuda>::empty(Shape{4096});
  const bf16* p = x.data();
  using Dims = std::pair<int64_t, int64_t>;
  for (auto [hd, ds] : std::initializer_list<Dims>{{48, 48}, {64, 128}, {256, 256}}) {
    SsdShape s;
    s.batch = 1, s.seq = 2, s.heads = 1, s.groups = 1, s.head_dim = hd, s.d_state = ds;
    CHECK_THROWS_AS(cuda::ssd_scan_forward<bf16>(x.data(), p, p, p, p, p, p, p, s, SsdStates{},
                                                 nullptr),
                    Error);
    SsdGrads<bf16> g;
    CHECK_THROWS_AS(cuda::ssd_scan_backward<bf16>(g, p, p, p, p, p, p, p, p, s, nullptr), Error);
  }
}
