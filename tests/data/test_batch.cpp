// Training batches (inputs, answer-only targets, padding, truncation) and the seeded epoch order.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <vector>

#include <mil/data/batch.hpp>

#include "common/error_of.hpp"

using namespace mil;

TEST_CASE("batch: inputs and answer targets with padding and truncation") {
  std::vector<data::LabelledSequence> seqs(2);
  seqs[0].tokens = {10, 11, 12, 13, 14};  // prompt 3, answer 2
  seqs[0].prompt_len = 3;
  seqs[1].tokens = {20, 21, 22, 23, 24, 25, 26, 27};  // prompt 2, answer 6: cut to 7 tokens
  seqs[1].prompt_len = 2;
  const std::vector<int64_t> rows = {1, 0};
  const data::TrainBatch b = data::make_batch(seqs, rows, 6, 0);
  constexpr int32_t X = data::kIgnoreTarget;
  CHECK(b.batch == 2);
  CHECK(b.seq_len == 6);
  // Catches an off-by-one between inputs and targets, prompt tokens counted in the loss, a
  // truncated row losing its last target, and rows taken in the wrong order.
  CHECK(b.ids == std::vector<int32_t>{20, 21, 22, 23, 24, 25, 10, 11, 12, 13, 14, 0});
  CHECK(b.targets == std::vector<int32_t>{X, 22, 23, 24, 25, 26, X, X, 13, 14, X, X});
  CHECK(b.answer_tokens == 7);
  // Inputs with a next token (6 + 4 of 12): training tokens and tokens/s count these, as the token
  // budget does; counting padded rows made both look twice as large.
  CHECK(b.input_tokens == 10);
  CHECK(test::error_of([&] { data::make_batch(seqs, std::vector<int64_t>{2}, 6, 0); })
            .find("sequence 2 of 2") != std::string::npos);
}

TEST_CASE("batch: the epoch order is a seeded uniform shuffle") {
  const auto a = data::epoch_order(100, 5, 3);
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 100; ++i) REQUIRE(sorted[size_t(i)] == i);  // a permutation
  CHECK(data::epoch_order(100, 5, 3) == a);  // reproducible: a resumed trainer sees the same
  CHECK(data::epoch_order(100, 5, 4) != a);  // each epoch its own order
  CHECK(data::epoch_order(100, 6, 3) != a);
  CHECK(data::epoch_order(0, 5, 0).empty());
  CHECK(data::epoch_order(1, 5, 0) == std::vector<int64_t>{0});
  // All 6 orders of 3 equally often (20000 epochs: 3333 each, sd 53). Catches the classic
  // biased shuffle that draws j from [0, n) at every step (off by about 370 here).
  std::map<std::vector<int64_t>, int> counts;
  for (int64_t e = 0; e < 20000; ++e) ++counts[data::epoch_order(3, 11, e)];
  REQUIRE(counts.size() == 6);
  for (const auto& [order, n] : counts) CHECK(std::abs(n - 3333) < 200);
}
