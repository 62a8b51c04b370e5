#pragma once
// One teacher-labelled example, the unit that labelling writes and distillation and evaluation
// read: the prompt rendered through the chat template, followed by the teacher's answer.
#include <cstdint>
#include <vector>

namespace mil::data {

struct LabelledSequence {
  std::vector<int32_t> tokens;  // prompt tokens, then answer tokens
  int32_t prompt_len = 0;       // tokens [0, prompt_len) are the prompt, the rest the answer
  // Optional (topk > 0): the teacher's top-k log-probabilities (temperature 1, unfiltered) at the
  // position that predicts each answer token, answer-major: entry [j * topk + i] belongs to answer
  // token j (tokens[prompt_len + j]), ranked i. Empty when the dataset stores no top-k.
  int32_t topk = 0;
  std::vector<int32_t> topk_ids;
  std::vector<float> topk_logprobs;

  int64_t answer_len() const { return int64_t(tokens.size()) - prompt_len; }
};

}  // namespace mil::data
