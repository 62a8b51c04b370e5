#pragma once
// Per-sequence log-probability of the answer tokens, on top of the cross-entropy row kernel
// (cross_entropy.hpp, cross_entropy.cuh). Sequences are consecutive row ranges: sequence s covers
// rows [offsets[s], offsets[s + 1]), offsets[0] = 0 and offsets[S] = rows. For logits [rows, V]
// and targets [rows] (ignore_index for prompt and padding rows):
//   logp[s]    = sum over the rows r of s with a target of log_softmax(logits[r])[targets[r]]
//              = -sum of the rows' cross-entropy losses
//   dlogits[r] = dlogp[s] (onehot(targets[r]) - softmax(logits[r]))   (0 for ignored rows)
//              = the cross-entropy gradient at row scale -dlogp[s]
// Neither the log-probabilities nor the softmax exist as tensors: the forward reads each row once
// (cross-entropy, loss only), the backward reads it once more and writes its gradient once
// (cross-entropy with per-row scales). Between the two, the per-row losses ([rows] values) are
// summed per sequence here, on the host in double, for either device: a loss on the sequences
// (dpo_loss.hpp) needs them on the host to form its gradient anyway.
#include <cstdint>
#include <vector>

#include "../core/error.hpp"

namespace mil {

// Throws unless offsets start at 0, never decrease and end at rows.
inline void check_sequence_offsets(const std::vector<int64_t>& offsets, int64_t rows) {
  MIL_CHECK(!offsets.empty() && offsets.front() == 0,
            "sequence_logprob: sequence offsets must start at 0");
  for (size_t s = 0; s + 1 < offsets.size(); ++s)
    MIL_CHECK(offsets[s + 1] >= offsets[s], "sequence_logprob: sequence ", s, " ends at row ",
              offsets[s + 1], " before it starts at row ", offsets[s]);
  MIL_CHECK(offsets.back() == rows, "sequence_logprob: the sequences cover ", offsets.back(),
            " rows, the logits have ", rows);
}

// logp[s] = -sum of row_nll over sequence s's rows, in double. row_nll holds the rows of
// sequences [first, first + logp.size()) from row offsets[first] on.
template <class A>
void sum_per_sequence(std::vector<double>& logp, const std::vector<A>& row_nll,
                      const std::vector<int64_t>& offsets, size_t first) {
  const int64_t base = offsets[first];
  for (size_t s = 0; s < logp.size(); ++s) {
    double sum = 0;
    for (int64_t r = offsets[first + s]; r < offsets[first + s + 1]; ++r)
      sum += double(row_nll[size_t(r - base)]);
    logp[s] = -sum;
  }
}

// The cross-entropy row scales that make its gradient that of sum_s dlogp[s] logp[s]:
// -dlogp[s] on every row of sequence s (same row numbering as sum_per_sequence).
template <class A>
std::vector<A> sequence_row_scales(const std::vector<double>& dlogp,
                                   const std::vector<int64_t>& offsets, size_t first) {
  const int64_t base = offsets[first];
  std::vector<A> scales(size_t(offsets[first + dlogp.size()] - base));
  for (size_t s = 0; s < dlogp.size(); ++s)
    for (int64_t r = offsets[first + s]; r < offsets[first + s + 1]; ++r)
      scales[size_t(r - base)] = A(-dlogp[s]);
  return scales;
}

}  // namespace mil
