// The continuous batch of data/sample_answers.hpp when slots compete for a step's tokens: prompts
// are fed oldest job first, so answers start (and, with answers of one length, finish) in the
// order the jobs came, and the in-order writers of labels and pairs never wait on a starved slot.
#include <doctest/doctest.h>

#include <optional>
#include <vector>

#include <mil/data/sample_answers.hpp>

#include "data/small_models.hpp"

using namespace mil;

TEST_CASE("sample_answers: a full batch feeds prompts oldest job first") {
  nn::HybridModel<float, Cpu> model(nn::all_attention(test::small_llama(50)));
  model.init_random(3, 0.3f);
  // As many slots as tokens per step: once every slot decodes, only what finishing slots free
  // is left for prompts, and in slot order a prompt in a high slot waited while lower slots took
  // new jobs (about 30 of these 40 jobs started out of order).
  data::AnswerSampling as;
  as.sampling.temperature = 0;
  as.stop_ids = {};  // every answer runs to max_answer: finishing order = starting order
  as.slots = 8;
  as.max_step_tokens = 8;
  as.max_prompt = 24;
  as.max_answer = 6;
  std::vector<std::vector<int32_t>> prompts;
  for (int32_t i = 0; i < 40; ++i)
    prompts.push_back(std::vector<int32_t>(size_t(1 + (i * 7) % 23), int32_t(2 + i % 45)));
  size_t next = 0;
  auto next_job = [&]() -> std::optional<data::AnswerJob> {
    if (next == prompts.size()) return std::nullopt;
    const size_t i = next++;
    return data::AnswerJob{int64_t(i), prompts[i], i};
  };
  std::vector<int64_t> started, finished;
  auto on_row = [&](int64_t id, const data::AnswerRow& row, data::LabelledSequence& seq) {
    CHECK(row.logits.size() == 50);  // the CPU hands over whole rows
    if (seq.answer_len() == 0) started.push_back(id);
  };
  auto on_done = [&](int64_t id, data::LabelledSequence&& seq) {
    CHECK(seq.answer_len() == as.max_answer);
    finished.push_back(id);
  };
  const auto counts = data::sample_answers(model, as, next_job, on_row, on_done);
  std::vector<int64_t> in_order(prompts.size());
  for (size_t i = 0; i < in_order.size(); ++i) in_order[i] = int64_t(i);
  // Catches: prompt chunks handed out in slot order (or any order but the jobs').
  CHECK(started == in_order);
  CHECK(finished == in_order);
  CHECK(counts.generated_tokens == 40 * as.max_answer);
  int64_t prompt_tokens = 0;
  for (const auto& p : prompts) prompt_tokens += int64_t(p.size());
  CHECK(counts.prefill_tokens == prompt_tokens);
}
