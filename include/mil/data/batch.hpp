#pragma once
// Training batches from labelled sequences, and the seeded order of an epoch.
//
// A batch row is one sequence from its first token, cut to seq_len + 1 tokens (seq_len inputs,
// each with the next token as target) and padded. The loss counts only positions whose target is
// an answer token (the teacher's answer, stop token included), as in supervised fine-tuning: the
// student learns to answer, not to predict prompts. Every other position has the target
// kIgnoreTarget (the ignore index of kernels/cross_entropy.hpp).
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "sequence.hpp"

namespace mil::data {

inline constexpr int32_t kIgnoreTarget = -100;

struct TrainBatch {
  int64_t batch = 0, seq_len = 0;
  std::vector<int32_t> ids;      // [batch * seq_len], row-major; pad_id past a sequence's end
  std::vector<int32_t> targets;  // [batch * seq_len]: the next token where it is an answer token
  int64_t answer_tokens = 0;     // targets that count (not kIgnoreTarget)
  int64_t input_tokens = 0;      // inputs with a next token (not padding, not a row's last token)
};

inline TrainBatch make_batch(std::span<const LabelledSequence> seqs,
                             std::span<const int64_t> indices, int64_t seq_len, int32_t pad_id) {
  MIL_CHECK(seq_len >= 1 && !indices.empty(), "make_batch: ", indices.size(), " rows of ",
            seq_len, " tokens");
  TrainBatch b;
  b.batch = int64_t(indices.size());
  b.seq_len = seq_len;
  b.ids.assign(size_t(b.batch * seq_len), pad_id);
  b.targets.assign(size_t(b.batch * seq_len), kIgnoreTarget);
  for (int64_t r = 0; r < b.batch; ++r) {
    const int64_t index = indices[size_t(r)];
    MIL_CHECK(index >= 0 && index < int64_t(seqs.size()), "make_batch: sequence ", index, " of ",
              seqs.size());
    const LabelledSequence& s = seqs[size_t(index)];
    const int64_t n = std::min(int64_t(s.tokens.size()), seq_len + 1);  // the tokens used
    int32_t* ids = b.ids.data() + r * seq_len;
    int32_t* targets = b.targets.data() + r * seq_len;
    for (int64_t p = 0; p < std::min(n, seq_len); ++p) ids[p] = s.tokens[size_t(p)];
    b.input_tokens += std::max<int64_t>(0, std::min(n - 1, seq_len));
    for (int64_t p = std::max<int64_t>(s.prompt_len, 1); p < n; ++p) {
      targets[p - 1] = s.tokens[size_t(p)];  // input p - 1 predicts answer token p
      ++b.answer_tokens;
    }
  }
  return b;
}

// The order of the n sequences in epoch `epoch`: a Fisher-Yates shuffle whose draws come from
// Philox stream (seed, epoch), so a trainer stopped at (epoch, position) resumes with the same
// order without replaying anything.
inline std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch) {
  MIL_CHECK(n >= 0 && epoch >= 0, "epoch_order: ", n, " sequences, epoch ", epoch);
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t(0));
  for (int64_t i = n - 1; i > 0; --i) {
    const rng::U32x4 r = rng::random_block(seed, uint64_t(epoch), uint64_t(i));
    const uint64_t x = uint64_t(r.v[0]) << 32 | r.v[1];
    // j uniform in [0, i]: the high half of x * (i + 1) (bias below 2^-24 for any n < 2^40).
    const auto j = int64_t((unsigned __int128)x * uint64_t(i + 1) >> 64);
    std::swap(order[size_t(i)], order[size_t(j)]);
  }
  return order;
}

}  // namespace mil::data
