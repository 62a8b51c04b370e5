// Mamba-1 selective scan on the GPU against the CPU reference in double on the same
// T-representable inputs: lengths around the chunk (64 tokens) and a lane's segment (8), several
// chunks, batch > 1, B and C groups that tiles of 16 channels hold whole or split (group sums
// direct and through partials; 4, 2 or 1 channels of a warp summed by shuffles), channels not a
// multiple of 16 or 8, u, delta, z, B and C packed or as column blocks of one fused buffer
// (strides that 16-byte copies can and cannot read), y with a stride, without z, D or the bias;
// gradient write modes and null gradients; bitwise equal backward runs; states across calls (a
// prefill split in pieces, decode steps of one token); unsupported sizes.
// The GPU's decays use the approximate exp2 of the special-function unit (relative error ~1e-6),
// so float results are held to kTolF32, not to fp32 rounding.
#include <doctest/doctest.h>

#include <cstring>
#include <utility>
#include <vector>

#include <mil/kernels/selective_scan.cuh>
#include <mil/kernels/selective_scan.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

// Normalised-error tolerances: bf16 outputs and input gradients; bf16 step-size and parameter
// gradients (differences of larger sums); float everything.
constexpr double kTol = 1e-2, kTolDt = 2e-2, kTolF32 = 5e-5;

template <class T>
double tol(bool dt_like) {
  return std::is_same_v<T, float> ? kTolF32 : dt_like ? kTolDt : kTol;
}

struct Case {
  int64_t batch, seq, channels, b_groups, c_groups;
  int pad;       // < 0: u, delta, z, B, C packed one after the other; else one fused row + pad
  int y_pad = 0;  // y (and dout) rows of channels + y_pad
  bool z = true, D = true, bias = true;
  float bias_scale = 2.f;
};

// u, delta, z, B, C (and their gradients) in one host buffer: offsets and strides.
struct Layout {
  SelectiveScanShape s;
  int64_t uo = 0, dlo = 0, zo = 0, bo = 0, co = 0, size = 0;
};

Layout make_layout(const Case& c) {
  Layout l;
  SelectiveScanShape& s = l.s;
  s.batch = c.batch, s.seq = c.seq, s.channels = c.channels, s.d_state = 16;
  s.b_groups = c.b_groups, s.c_groups = c.c_groups, s.bias_scale = c.bias_scale;
  s.y_stride = c.y_pad ? c.channels + c.y_pad : 0;
  const int64_t rows = c.batch * c.seq, ch = c.channels, bw = c.b_groups * 16, cw = c.c_groups * 16;
  if (c.pad < 0) {
    l.uo = 0, l.dlo = rows * ch, l.zo = 2 * rows * ch, l.bo = 3 * rows * ch, l.co = l.bo + rows * bw;
    l.size = l.co + rows * cw;
  } else {
    // Mamba-in-Llama's in_proj row order [x | z | B | C], with delta and u joining the row.
    const int64_t width = 3 * ch + bw + cw + c.pad;
    s.u_stride = s.delta_stride = s.z_stride = s.b_stride = s.c_stride = width;
    l.zo = 0, l.bo = ch, l.co = ch + bw, l.uo = ch + bw + cw, l.dlo = 2 * ch + bw + cw;
    l.size = rows * width;
  }
  return l;
}

// Inputs as floats representable in T: the fused buffer, delta_bias, A_log, D.
struct Inputs {
  std::vector<float> mem, bias, A_log, D;
};

template <class T>
Inputs make_inputs(const Layout& l, uint64_t seed) {
  Inputs in;
  const SelectiveScanShape& s = l.s;
  in.mem = test::representable<T>(size_t(l.size), seed, -1.f, 1.f);
  for (int64_t r = 0; r < s.batch * s.seq; ++r)  // step sizes: softplus(-2.7 .. 0.6 + bias)
    for (int64_t c = 0; c < s.channels; ++c) {
      float& v = in.mem[size_t(l.dlo + r * s.ds() + c)];
      v = float(T(-1.0f + 1.6f * v));
    }
  in.bias = test::representable<T>(size_t(s.channels), seed + 1, -0.7f, 0.1f);
  in.A_log = test::representable<T>(size_t(s.channels * 16), seed + 2, -1.f, 1.5f);
  in.D = test::representable<T>(size_t(s.channels), seed + 3, 0.5f, 1.5f);
  return in;
}

template <class T>
struct GpuInputs {
  Tensor<T, Cuda> mem, bias, A_log, D;
  explicit GpuInputs(const Inputs& in)
      : mem(test::to_gpu(test::cast_vector<T>(in.mem))),
        bias(test::to_gpu(test::cast_vector<T>(in.bias))),
        A_log(test::to_gpu(test::cast_vector<T>(in.A_log))),
        D(test::to_gpu(test::cast_vector<T>(in.D))) {}
};

std::string describe(const Case& c) {
  return "batch " + std::to_string(c.batch) + " seq " + std::to_string(c.seq) + " channels " +
         std::to_string(c.channels) + " groups " + std::to_string(c.b_groups) + "/" +
         std::to_string(c.c_groups) + " pad " + std::to_string(c.pad) + " y_pad " +
         std::to_string(c.y_pad) + " z/D/bias " + std::to_string(c.z) + std::to_string(c.D) +
         std::to_string(c.bias);
}

// Rows of `width` columns at `off` (stride apart) as doubles.
template <class V>
std::vector<double> gather(const V& v, int64_t rows, int64_t off, int64_t stride, int64_t width) {
  std::vector<double> r;
  for (int64_t row = 0; row < rows; ++row)
    for (int64_t i = 0; i < width; ++i) r.push_back(double(to_acc(v[size_t(off + row * stride + i)])));
  return r;
}

template <class T>
void check_forward(const Case& c, uint64_t seed) {
  const Layout l = make_layout(c);
  const SelectiveScanShape& s = l.s;
  INFO(describe(c), " ", test::type_name<T>());
  const Inputs in = make_inputs<T>(l, seed);
  const int64_t rows = s.batch * s.seq, ny = rows * s.ys();

  auto md = test::cast_vector<double>(in.mem);
  auto bd = test::cast_vector<double>(in.bias), ad = test::cast_vector<double>(in.A_log),
       dd = test::cast_vector<double>(in.D);
  std::vector<double> y_ref(static_cast<size_t>(ny));
  const double* m = md.data();
  cpu::selective_scan_forward<double>(y_ref.data(), m + l.uo, m + l.dlo, c.bias ? bd.data() : nullptr,
                                      ad.data(), m + l.bo, m + l.co, c.D ? dd.data() : nullptr,
                                      c.z ? m + l.zo : nullptr, s);

  GpuInputs<T> g(in);
  auto y = test::poisoned_gpu<T>(size_t(ny));
  const T* mg = g.mem.data();
  cuda::selective_scan_forward<T>(y.data(), mg + l.uo, mg + l.dlo, c.bias ? g.bias.data() : nullptr,
                                  g.A_log.data(), mg + l.bo, mg + l.co, c.D ? g.D.data() : nullptr,
                                  c.z ? mg + l.zo : nullptr, s, SelectiveStates{}, nullptr);
  const auto yv = y.to_vector();  // synchronises
  MIL_CUDA_CHECK(cudaGetLastError());
  test::require_close("selective scan gpu y", gather(yv, rows, 0, s.ys(), s.channels),
                      gather(y_ref, rows, 0, s.ys(), s.channels), tol<T>(false));
  // Columns of y past the channels stay the poison.
  size_t outside = 0;
  const T poison = test::poison<T>();
  for (int64_t i = 0; i < ny; ++i)
    if (i % s.ys() >= s.channels && std::memcmp(&yv[size_t(i)], &poison, sizeof(T)) != 0) ++outside;
  CHECK(outside == 0);
}

struct GradMode {
  bool accumulate_inputs, accumulate_params;
  bool du = true, ddelta = true, dB = true, dC = true, dz = true;
  bool dbias = true, dA = true, dD = true;
};

template <class T>
void check_backward(const Case& c, const GradMode& gm, uint64_t seed) {
  const Layout l = make_layout(c);
  const SelectiveScanShape& s = l.s;
  INFO(describe(c), " accumulate ", gm.accumulate_inputs, "/", gm.accumulate_params, " ",
       test::type_name<T>());
  const Inputs in = make_inputs<T>(l, seed);
  const int64_t rows = s.batch * s.seq, ch = s.channels;
  const auto dout = test::representable<T>(size_t(rows * s.ys()), seed + 10);
  // Gradient buffers pre-filled with non-zero values (kept where nothing is written).
  const auto gmem0 = test::representable<T>(size_t(l.size), seed + 11);
  const auto gpar0 = test::representable<T>(size_t(18 * ch), seed + 12);

  auto md = test::cast_vector<double>(in.mem), dod = test::cast_vector<double>(dout);
  auto bd = test::cast_vector<double>(in.bias), ad = test::cast_vector<double>(in.A_log),
       dd = test::cast_vector<double>(in.D);
  auto gm_ref = test::cast_vector<double>(gmem0), gp_ref = test::cast_vector<double>(gpar0);
  auto set = [&](auto& gr, auto* gmem, auto* gpar) {
    gr.du = gm.du ? gmem + l.uo : nullptr;
    gr.ddelta = gm.ddelta ? gmem + l.dlo : nullptr;
    gr.dB = gm.dB ? gmem + l.bo : nullptr;
    gr.dC = gm.dC ? gmem + l.co : nullptr;
    gr.dz = gm.dz ? gmem + l.zo : nullptr;
    gr.ddelta_bias = gm.dbias ? gpar : nullptr;
    gr.dA_log = gm.dA ? gpar + ch : nullptr;
    gr.dD = gm.dD ? gpar + 17 * ch : nullptr;
    gr.accumulate_inputs = gm.accumulate_inputs, gr.accumulate_params = gm.accumulate_params;
  };
  SelectiveScanGrads<double> gr;
  set(gr, gm_ref.data(), gp_ref.data());
  const double* m = md.data();
  cpu::selective_scan_backward<double>(gr, dod.data(), m + l.uo, m + l.dlo,
                                       c.bias ? bd.data() : nullptr, ad.data(), m + l.bo, m + l.co,
                                       c.D ? dd.data() : nullptr, c.z ? m + l.zo : nullptr, s);

  GpuInputs<T> g(in);
  auto dout_gpu = test::to_gpu(test::cast_vector<T>(dout));
  // The gradient buffers after one GPU backward from the pre-filled values.
  auto run_gpu = [&] {
    auto gmem = test::to_gpu(test::cast_vector<T>(gmem0));
    auto gpar = test::to_gpu(test::cast_vector<T>(gpar0));
    SelectiveScanGrads<T> gg;
    set(gg, gmem.data(), gpar.data());
    const T* mg = g.mem.data();
    cuda::selective_scan_backward<T>(gg, dout_gpu.data(), mg + l.uo, mg + l.dlo,
                                     c.bias ? g.bias.data() : nullptr, g.A_log.data(), mg + l.bo,
                                     mg + l.co, c.D ? g.D.data() : nullptr,
                                     c.z ? mg + l.zo : nullptr, s, nullptr);
    auto out = std::make_pair(gmem.to_vector(), gpar.to_vector());  // synchronises
    MIL_CUDA_CHECK(cudaGetLastError());
    return out;
  };
  const auto [gmem_out, gpar_out] = run_gpu();
  // Every sum has a fixed order: a second run gives the same bits.
  const auto again = run_gpu();
  CHECK(std::memcmp(again.first.data(), gmem_out.data(), gmem_out.size() * sizeof(T)) == 0);
  CHECK(std::memcmp(again.second.data(), gpar_out.data(), gpar_out.size() * sizeof(T)) == 0);

  const int64_t bw = s.b_groups * 16, cw = s.c_groups * 16;
  if (gm.du)
    test::require_close("selective scan gpu du", gather(gmem_out, rows, l.uo, s.us(), ch),
                        gather(gm_ref, rows, l.uo, s.us(), ch), tol<T>(false));
  if (gm.ddelta)
    test::require_close("selective scan gpu ddelta", gather(gmem_out, rows, l.dlo, s.ds(), ch),
                        gather(gm_ref, rows, l.dlo, s.ds(), ch), tol<T>(true));
  if (gm.dB)
    test::require_close("selective scan gpu dB", gather(gmem_out, rows, l.bo, s.bs(), bw),
                        gather(gm_ref, rows, l.bo, s.bs(), bw), tol<T>(false));
  if (gm.dC)
    test::require_close("selective scan gpu dC", gather(gmem_out, rows, l.co, s.cs(), cw),
                        gather(gm_ref, rows, l.co, s.cs(), cw), tol<T>(false));
  if (gm.dz && c.z)
    test::require_close("selective scan gpu dz", gather(gmem_out, rows, l.zo, s.zs(), ch),
                        gather(gm_ref, rows, l.zo, s.zs(), ch), tol<T>(false));
  const bool par[3] = {gm.dbias, gm.dA, gm.dD};
  const int64_t par_off[3] = {0, ch, 17 * ch}, par_len[3] = {ch, 16 * ch, ch};
  const char* par_name[3] = {"selective scan gpu ddelta_bias", "selective scan gpu dA_log",
                             "selective scan gpu dD"};
  for (int k = 0; k < 3; ++k)
    if (par[k])
      test::require_close(par_name[k], gather(gpar_out, 1, par_off[k], 0, par_len[k]),
                          gather(gp_ref, 1, par_off[k], 0, par_len[k]), tol<T>(true));
  // Where the CPU wrote nothing (null gradients, dz without z, spare columns), neither did the GPU.
  const auto gmem0_t = test::cast_vector<T>(gmem0), gpar0_t = test::cast_vector<T>(gpar0);
  size_t differ = 0;
  for (size_t i = 0; i < gm_ref.size(); ++i)
    if (gm_ref[i] == double(to_acc(gmem0_t[i])) &&
        std::memcmp(&gmem_out[i], &gmem0_t[i], sizeof(T)) != 0)
      ++differ;
  CHECK(differ == 0);
  for (int k = 0; k < 3; ++k)
    if (!par[k])
      CHECK(std::memcmp(gpar_out.data() + par_off[k], gpar0_t.data() + par_off[k],
                        size_t(par_len[k]) * sizeof(T)) == 0);
}

// The forward over [0, seq) from random initial states in one call and in the pieces `splits`
// (pieces of one token take the decode kernel), both against the CPU's one call.
template <class T>
void check_states(const Case& c, const std::vector<int64_t>& splits, uint64_t seed) {
  const Layout l = make_layout(c);
  const SelectiveScanShape& s = l.s;
  INFO(describe(c), " pieces ", splits.size(), " ", test::type_name<T>());
  const Inputs in = make_inputs<T>(l, seed);
  const int64_t ch = s.channels, ny = s.batch * s.seq * ch;
  const int64_t n_slots = s.batch + 1, per_slot = s.state_size();
  std::vector<int32_t> slots(static_cast<size_t>(s.batch));
  for (int64_t b = 0; b < s.batch; ++b) slots[size_t(b)] = int32_t(s.batch - b);  // slot 0 unused
  const auto st0 = test::random_vector<float>(size_t(n_slots * per_slot), seed + 20, -0.5f, 0.5f);

  auto md = test::cast_vector<double>(in.mem);
  auto bd = test::cast_vector<double>(in.bias), ad = test::cast_vector<double>(in.A_log),
       dd = test::cast_vector<double>(in.D);
  std::vector<double> y_ref(static_cast<size_t>(s.batch * s.seq * s.ys()));  // y's stride
  std::vector<float> st_ref = st0;
  const double* m = md.data();
  cpu::selective_scan_forward<double>(y_ref.data(), m + l.uo, m + l.dlo, bd.data(), ad.data(),
                                      m + l.bo, m + l.co, dd.data(), c.z ? m + l.zo : nullptr, s,
                                      SelectiveStates{st_ref.data(), n_slots, slots.data()});

  GpuInputs<T> g(in);
  auto slots_gpu = test::to_gpu(slots);
  const auto mem_t = test::cast_vector<T>(in.mem);
  auto run = [&](const std::vector<int64_t>& pieces, Tensor<float, Cuda>& st) {
    std::vector<T> y_all(static_cast<size_t>(ny));
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
      copy_block(l.uo, pl.uo, s.us(), pl.s.us(), ch);
      copy_block(l.dlo, pl.dlo, s.ds(), pl.s.ds(), ch);
      copy_block(l.zo, pl.zo, s.zs(), pl.s.zs(), ch);
      copy_block(l.bo, pl.bo, s.bs(), pl.s.bs(), s.b_groups * 16);
      copy_block(l.co, pl.co, s.cs(), pl.s.cs(), s.c_groups * 16);
      auto piece_gpu = test::to_gpu(piece);
      auto y = test::poisoned_gpu<T>(size_t(s.batch * len * pl.s.ys()));
      const T* mg = piece_gpu.data();
      cuda::selective_scan_forward<T>(y.data(), mg + pl.uo, mg + pl.dlo, g.bias.data(),
                                      g.A_log.data(), mg + pl.bo, mg + pl.co, g.D.data(),
                                      c.z ? mg + pl.zo : nullptr, pl.s,
                                      SelectiveStates{st.data(), n_slots, slots_gpu.data()},
                                      nullptr);
      const auto yv = y.to_vector();
      for (int64_t b = 0; b < s.batch; ++b)
        for (int64_t t = 0; t < len; ++t)
          for (int64_t i = 0; i < ch; ++i)
            y_all[size_t((b * s.seq + t0 + t) * ch + i)] = yv[size_t((b * len + t) * pl.s.ys() + i)];
      t0 += len;
    }
    REQUIRE(t0 == s.seq);
    return y_all;
  };
  auto st_one = test::to_gpu(st0), st_pieces = test::to_gpu(st0);
  const auto y_one = run({s.seq}, st_one);
  const auto y_pieces = run(splits, st_pieces);
  MIL_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> y_ref_packed;
  for (int64_t r = 0; r < s.batch * s.seq; ++r)
    for (int64_t i = 0; i < ch; ++i) y_ref_packed.push_back(y_ref[size_t(r * s.ys() + i)]);
  const double t = tol<T>(false);
  test::require_close("selective scan gpu states: one call y", y_one, y_ref_packed, t);
  test::require_close("selective scan gpu states: pieces y", y_pieces, y_ref_packed, t);
  const auto so = st_one.to_vector(), sp = st_pieces.to_vector();
  test::require_close("selective scan gpu states: one call final state", so, st_ref, t);
  test::require_close("selective scan gpu states: pieces final state", sp, st_ref, t);
  test::require_close("selective scan gpu states: pieces equal one call", y_pieces, y_one, t);
  // slot 0 belongs to no row: untouched
  CHECK(std::memcmp(so.data(), st0.data(), size_t(per_slot) * sizeof(float)) == 0);
  CHECK(std::memcmp(sp.data(), st0.data(), size_t(per_slot) * sizeof(float)) == 0);
}

}  // namespace

TEST_CASE("selective scan: gpu forward matches the cpu around the chunk length") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 100;
  // (batch, seq, channels, b_groups, c_groups, pad): one token, shorter than a lane's segment,
  // one segment and past it, one chunk and past it, several chunks; S-like groups (48 / 16
  // channels), L-like (64 / 16), a tile holding several groups (groups of 4 and 2 channels),
  // groups straddling tiles (24 channels), groups of 3 channels, channels not a multiple of 8
  for (const Case& c : {Case{1, 1, 32, 2, 2, -1}, Case{2, 5, 48, 1, 3, -1},
                        Case{1, 8, 64, 4, 4, -1}, Case{2, 9, 96, 2, 6, -1},
                        Case{2, 32, 96, 2, 6, -1}, Case{3, 33, 128, 2, 8, -1},
                        Case{1, 64, 48, 1, 3, -1}, Case{2, 65, 96, 2, 6, -1},
                        Case{2, 100, 144, 3, 9, -1}, Case{1, 77, 40, 10, 20, -1},
                        Case{2, 70, 72, 3, 6, -1}, Case{2, 41, 36, 3, 12, -1},
                        Case{1, 200, 48, 16, 16, -1}, Case{2, 129, 64, 1, 4, -1}}) {
    check_forward<bf16>(c, seed);
    check_forward<float>(c, seed + 1);
    seed += 10;
  }
}

TEST_CASE("selective scan: gpu forward reads inputs as column blocks of one fused buffer") {
  MIL_GPU_TEST_GUARD();
  // pad 0 (widths multiples of 8: 16-byte copies in place), pad 3 (element copies), y with a
  // stride; without z, D or the bias
  check_forward<bf16>({2, 70, 96, 2, 6, 0}, 300);
  check_forward<bf16>({2, 45, 96, 2, 6, 3, 5}, 310);
  check_forward<float>({1, 66, 48, 1, 3, 0, 4}, 320);
  Case bare{2, 50, 64, 4, 4, -1};
  bare.z = bare.D = bare.bias = false;
  bare.bias_scale = 1.f;
  check_forward<bf16>(bare, 330);
  check_forward<float>(bare, 340);
}

TEST_CASE("selective scan: gpu backward matches the cpu with write modes") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 1000;
  int mode = 0;
  for (const Case& c : {Case{1, 7, 32, 2, 2, -1}, Case{2, 32, 96, 2, 6, -1},
                        Case{2, 75, 144, 3, 9, 0}, Case{1, 100, 128, 2, 8, 3, 2},
                        Case{2, 40, 40, 10, 20, -1}, Case{2, 66, 72, 3, 6, -1},
                        Case{1, 39, 36, 3, 12, 1}, Case{3, 9, 24, 1, 1, -1},
                        Case{2, 150, 96, 2, 6, -1}, Case{1, 130, 48, 16, 16, -1},
                        Case{1, 64, 36, 12, 12, -1}, Case{2, 200, 32, 2, 2, 0}}) {
    GradMode gm{(mode & 1) != 0, (mode & 2) != 0};
    check_backward<bf16>(c, gm, seed);
    check_backward<float>(c, GradMode{!gm.accumulate_inputs, !gm.accumulate_params}, seed + 1);
    seed += 10;
    ++mode;
  }
}

TEST_CASE("selective scan: gpu backward without z D and bias and with null gradients") {
  MIL_GPU_TEST_GUARD();
  Case bare{2, 45, 64, 4, 4, -1};
  bare.z = bare.D = bare.bias = false;
  check_backward<bf16>(bare, GradMode{false, false}, 2000);  // dz requested without z: untouched
  GradMode only_inputs{true, false};
  only_inputs.dbias = only_inputs.dA = only_inputs.dD = false;
  only_inputs.dB = false;
  check_backward<bf16>({2, 70, 96, 2, 6, 0}, only_inputs, 2010);
  GradMode only_params{false, true};
  only_params.du = only_params.ddelta = only_params.dB = only_params.dC = only_params.dz = false;
  check_backward<bf16>({2, 70, 96, 2, 6, -1}, only_params, 2020);
  GradMode mixed{true, true};
  mixed.du = mixed.dD = mixed.dC = false;
  check_backward<float>({1, 50, 72, 3, 6, 3}, mixed, 2030);
}

TEST_CASE("selective scan: gpu backward with no tokens resets overwritten parameter gradients") {
  MIL_GPU_TEST_GUARD();
  const int64_t ch = 32;
  SelectiveScanShape s;
  s.batch = 2, s.seq = 0, s.channels = ch, s.b_groups = 2, s.c_groups = 2;
  auto par = test::to_gpu(std::vector<bf16>(size_t(18 * ch), bf16(1.5f)));
  SelectiveScanGrads<bf16> g;
  g.ddelta_bias = par.data(), g.dA_log = par.data() + ch, g.dD = par.data() + 17 * ch;
  g.accumulate_params = true;
  const bf16* p = par.data();
  cuda::selective_scan_backward<bf16>(g, p, p, p, p, p, p, p, p, p, s, nullptr);
  MIL_CUDA_CHECK(cudaDeviceSynchronize());
  CHECK(test::as_double(par.to_vector()) == std::vector<double>(size_t(18 * ch), 1.5));
  g.accumulate_params = false;
  cuda::selective_scan_backward<bf16>(g, p, p, p, p, p, p, p, p, p, s, nullptr);
  MIL_CUDA_CHECK(cudaDeviceSynchronize());
  CHECK(test::as_double(par.to_vector()) == std::vector<double>(size_t(18 * ch), 0.0));
}

TEST_CASE("selective scan: gpu states carry a sequence across calls") {
  MIL_GPU_TEST_GUARD();
  // a prefill split in pieces equals one call
  check_states<bf16>({2, 100, 96, 2, 6, -1}, {37, 63}, 3000);
  check_states<bf16>({1, 90, 72, 3, 6, 0}, {32, 33, 25}, 3010);
  check_states<float>({2, 40, 40, 10, 20, -1}, {10, 30}, 3020);
  // the chunked scan equals the step kernel: a prefill, then decode steps of one token
  check_states<bf16>({2, 45, 144, 3, 9, -1}, {40, 1, 1, 1, 1, 1}, 3030);
  check_states<bf16>({3, 6, 36, 3, 12, 3}, {1, 1, 1, 1, 1, 1}, 3040);
  check_states<float>({2, 20, 64, 4, 4, -1, 3}, {5, 1, 1, 13}, 3050);
  Case no_z{2, 12, 32, 2, 2, -1};
  no_z.z = false;
  check_states<float>(no_z, {1, 10, 1}, 3060);
}

TEST_CASE("selective scan: gpu rejects unsupported sizes") {
  MIL_GPU_TEST_GUARD();
  auto buf = Tensor<bf16, Cuda>::empty(Shape{4096});
  const bf16* p = buf.data();
  SelectiveScanShape s;
  s.batch = 1, s.seq = 4, s.channels = 16, s.b_groups = 1, s.c_groups = 1;
  s.d_state = 8;  // only 16 on the GPU
  CHECK_THROWS_AS(cuda::selective_scan_forward<bf16>(buf.data(), p, p, p, p, p, p, p, p, s,
                                                     SelectiveStates{}, nullptr),
                  Error);
  SelectiveScanGrads<bf16> g;
  CHECK_THROWS_AS(cuda::selective_scan_backward<bf16>(g, p, p, p, p, p, p, p, p, p, s, nullptr),
                  Error);
  s.d_state = 16, s.b_groups = 3;  // 16 channels are not a multiple of 3 groups
  CHECK_THROWS_AS(cuda::selective_scan_forward<bf16>(buf.data(), p, p, p, p, p, p, p, p, s,
                                                     SelectiveStates{}, nullptr),
                  Error);
}
