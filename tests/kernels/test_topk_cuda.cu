// Row top-k with log-sum-exp on the GPU against the CPU reference (kernels/topk.hpp): ids and
// values exactly, on vocabulary-wide rows in bf16 (many exact ties) and float, with NaN, -inf,
// +inf, rows with fewer candidates than k, and a row stride; the log-sum-exp to float rounding.
// And the labeller's sampling with the device's top-k against sampling whole rows on the host.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <mil/data/sample_answers.hpp>
#include <mil/kernels/topk.cuh>

#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

template <class T>
void check_topk(int32_t k, uint64_t seed) {
  const int64_t rows = 6, cols = 49152, ld = cols + 64;
  auto x = test::cast_vector<T>(test::random_vector<float>(size_t(rows * ld), seed, -8.f, 8.f));
  for (int64_t c = cols; c < ld; ++c) x[size_t(c)] = T(100.f);  // padding: never read
  x[size_t(1 * ld + 40000)] = T(20.f);  // a tie at the top: the smaller id first
  x[size_t(1 * ld + 7)] = T(20.f);
  x[size_t(1 * ld + 3)] = T(INFINITY);
  for (int64_t c = 0; c < cols; ++c) {
    x[size_t(2 * ld + c)] = c % 3 ? T(NAN) : T(-INFINITY);  // no candidates at all
    if (c % 5000 == 1) x[size_t(3 * ld + c)] = T(-INFINITY);
    if (c > 2) x[size_t(4 * ld + c)] = T(NAN);  // three candidates
  }
  std::vector<int32_t> ids(size_t(rows * k));
  std::vector<float> values(size_t(rows * k)), lse(static_cast<size_t>(rows));
  cpu::topk_rows(ids.data(), values.data(), lse.data(), x.data(), rows, cols, ld, k);
  auto xg = test::to_gpu(x);
  auto ids_g = test::to_gpu(std::vector<int32_t>(ids.size(), 7));
  auto values_g = test::to_gpu(std::vector<float>(values.size(), 7.f));
  auto lse_g = test::to_gpu(std::vector<float>(lse.size(), 7.f));
  mil::cuda::topk_rows<T>(ids_g.data(), values_g.data(), lse_g.data(), xg.data(), rows, cols, ld, k,
                     mil::cuda::current_stream());
  CHECK(ids_g.to_vector() == ids);
  const auto v = values_g.to_vector();
  for (size_t i = 0; i < v.size(); ++i) REQUIRE((v[i] == values[i] || (std::isinf(v[i]) && v[i] == values[i])));
  const auto l = lse_g.to_vector();
  for (size_t r = 0; r < l.size(); ++r) {
    CAPTURE(r);
    if (std::isinf(lse[r])) CHECK(l[r] == lse[r]);
    else CHECK(l[r] == doctest::Approx(lse[r]).epsilon(1e-6));
  }
  // The fixture reaches what it means to: the tie, the +inf, the empty and the short row.
  CHECK(ids[size_t(k)] == 3);
  if (k > 2) CHECK(ids[size_t(k + 1)] == 7);
  if (k > 2) CHECK(ids[size_t(k + 2)] == 40000);
  CHECK(ids[size_t(2 * k)] == -1);
  if (k > 3) CHECK(ids[size_t(4 * k + 3)] == -1);
}

}  // namespace

TEST_CASE("topk cuda: equals the CPU on vocabulary-wide rows") {
  MIL_GPU_TEST_GUARD();
  for (int32_t k : {1, 10, kMaxTopK}) {
    CAPTURE(k);
    check_topk<bf16>(k, 3 + uint64_t(k));
    check_topk<float>(k, 5 + uint64_t(k));
  }
}

TEST_CASE("sample_answers cuda: the device's top-k gives the answers of whole rows") {
  // The labeller on the GPU sends the host each row's top-k instead of the row: the same logits,
  // the same candidates, so the same tokens, bitwise.
  MIL_GPU_TEST_GUARD();
  nn::LlamaConfig cfg;
  cfg.vocab = 301;
  cfg.d_model = 128;
  cfg.n_layers = 2;
  cfg.n_heads = 2;
  cfg.n_kv_heads = 1;
  cfg.head_dim = 64;  // the GPU's KV-cache attention takes 64 or 128
  cfg.d_ff = 200;
  nn::HybridModel<float, Cpu> cpu_model(nn::all_attention(cfg));
  cpu_model.init_random(7, 0.3f);
  const auto model = nn::convert_model<bf16, Cuda>(cpu_model);
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t i = 0; i < 12; ++i) {
    std::vector<int32_t> p;
    for (int64_t t = 0; t < 1 + (i * 29) % 40; ++t) p.push_back(int32_t(3 + (i * 11 + t * 5) % 297));
    prompts.push_back(p);
  }
  auto run = [&](int32_t row_topk, int64_t* rows_seen) {
    data::AnswerSampling as;
    as.sampling.temperature = 0.9f;
    as.sampling.top_k = 10;
    as.sampling.top_p = 0.95f;
    as.sampling.min_p = 0;
    as.stop_ids = {1};
    as.slots = 5;
    as.max_prompt = 48;
    as.max_answer = 24;
    as.max_step_tokens = 64;
    as.row_topk = row_topk;
    size_t next = 0;
    std::vector<std::vector<int32_t>> answers(prompts.size());
    auto next_job = [&]() -> std::optional<data::AnswerJob> {
      if (next == prompts.size()) return std::nullopt;
      const size_t i = next++;
      return data::AnswerJob{int64_t(i), prompts[i], 1000 + i};
    };
    auto on_row = [&](int64_t, const data::AnswerRow& row, data::LabelledSequence&) {
      *rows_seen += 1;
      CHECK(row.logits.empty() == (row_topk > 0));  // the device path is the one taken
    };
    auto on_done = [&](int64_t id, data::LabelledSequence&& s) { answers[size_t(id)] = s.tokens; };
    data::sample_answers(model, as, next_job, on_row, on_done);
    return answers;
  };
  int64_t rows_host = 0, rows_device = 0;
  const auto host = run(0, &rows_host), device = run(10, &rows_device);
  CHECK(device == host);
  CHECK(rows_device == rows_host);
  int64_t sampled = 0;
  for (size_t i = 0; i < host.size(); ++i) sampled += int64_t(host[i].size() - prompts[i].size());
  CHECK(sampled > 100);  // answers long enough to compare
}
