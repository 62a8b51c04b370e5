#pragma once
// Small random models for the dataset tests, and the tests' own log-probability of an answer: one
// training forward of the whole sequence and a log-softmax in double per answer position,
// independent of data/sequence_logprob.hpp.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <mil/nn/hybrid.hpp>

namespace mil::test {

// Two layers of width 32: fast under ASan, wide enough for distinct answers.
inline nn::LlamaConfig small_llama(int64_t vocab) {
  nn::LlamaConfig c;
  c.vocab = vocab;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.d_ff = 48;
  c.rope_theta = 500.f;
  return c;
}

// Logits [ids.size(), vocab] through the training forward, in double.
template <class T>
std::vector<double> forward_logits(const nn::HybridModel<T, Cpu>& model, const std::vector<int32_t>& ids) {
  const int64_t seq = int64_t(ids.size());
  ag::Tape tape;
  ag::NoGrad ng(tape);
  const auto t = Tensor<int32_t, Cpu>::from(Shape{seq}, ids);
  const auto v = model.forward(tape, t, nn::sequence_positions<Cpu>(1, seq), 1, seq).value().to_vector();
  return {v.begin(), v.end()};
}

// Sum over answer tokens j of log softmax(logits at the position before j)[answer[j]].
template <class T>
double answer_logprob(const nn::HybridModel<T, Cpu>& model, const std::vector<int32_t>& prompt,
                      const std::vector<int32_t>& answer) {
  const int64_t vocab = model.config().llama.vocab;
  std::vector<int32_t> ids = prompt;
  ids.insert(ids.end(), answer.begin(), answer.end());
  const std::vector<double> logits = forward_logits(model, ids);
  double sum = 0;
  for (size_t j = 0; j < answer.size(); ++j) {
    const double* row = logits.data() + (prompt.size() - 1 + j) * size_t(vocab);
    const double top = *std::max_element(row, row + vocab);
    double z = 0;
    for (int64_t v = 0; v < vocab; ++v) z += std::exp(row[v] - top);
    sum += row[answer[j]] - top - std::log(z);
  }
  return sum;
}

}  // namespace mil::test
