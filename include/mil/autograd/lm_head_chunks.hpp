#pragma once
// A loss on the logits hidden head^T, formed a chunk of rows at a time so that the [rows, vocab]
// logits never exist at once (distill_loss_lm_head, dpo_loss_lm_head). For each chunk the logits
// go into one scratch buffer, the loss of the chunk turns them into their gradient in place, and
// that gradient reaches the hidden states (their rows of dhidden) and a trainable head (dhead,
// accumulated over the chunks) before the next chunk overwrites the buffer. In bf16 the head's
// gradient is rounded to bf16 once per chunk as it accumulates.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "ops.hpp"

namespace mil::ag {

// Checks hidden [rows, d] and head [V, d]; returns V.
template <Element T, Device D>
int64_t lm_head_vocab(const std::string& what, const Var<T, D>& hidden, const Var<T, D>& head) {
  check_rank2((what + " hidden").c_str(), hidden.shape());
  check_rank2((what + " head").c_str(), head.shape());
  MIL_CHECK(head.size(1) == hidden.size(1), what, ": head ", head.shape().str(),
            " does not take hidden states of width ", hidden.size(1));
  return head.size(0);
}

// Chunk boundaries 0, chunk_rows, 2 chunk_rows, ..., rows.
inline std::vector<int64_t> even_chunks(int64_t rows, int64_t chunk_rows) {
  MIL_CHECK(chunk_rows > 0, "lm_head loss: chunk_rows must be positive, got ", chunk_rows);
  std::vector<int64_t> bounds{0};
  for (int64_t r = 0; r < rows;) {
    r = rows - r > chunk_rows ? r + chunk_rows : rows;
    bounds.push_back(r);
  }
  return bounds;
}

// bounds: chunk boundaries, increasing from 0 to hidden's rows. For each chunk [r0, r0 + n):
// logits = hidden[r0 : r0 + n] head^T into a [n, V] scratch, then chunk_loss(r0, n, logits,
// record) computes the chunk's losses and, when record is true, overwrites logits with the
// gradient of the loss with respect to them. Records one node that hands dhidden and dhead over.
template <Element T, Device D, class ChunkLoss>
void lm_head_loss_chunks(Tape& tape, const Var<T, D>& hidden, const Var<T, D>& head,
                         const std::vector<int64_t>& bounds, ChunkLoss&& chunk_loss) {
  const int64_t rows = hidden.size(0), dim = hidden.size(1), vocab = head.size(0);
  MIL_CHECK(!bounds.empty() && bounds.front() == 0 && bounds.back() == rows,
            "lm_head loss: chunk bounds do not cover the ", rows, " rows");
  int64_t chunk = 1;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    MIL_CHECK(bounds[i + 1] > bounds[i], "lm_head loss: empty or reversed chunk ", i);
    chunk = std::max(chunk, bounds[i + 1] - bounds[i]);
  }
  const bool grad_hidden = hidden.requires_grad(), grad_head = head.requires_grad();
  const bool record = tape.recording() && (grad_hidden || grad_head);
  Tensor<T, D> logits = Tensor<T, D>::empty(Shape{chunk, vocab});
  Tensor<T, D> dhidden = record && grad_hidden ? Tensor<T, D>::empty(hidden.shape()) : Tensor<T, D>();
  Tensor<T, D> dhead = record && grad_head ? Tensor<T, D>::empty(head.shape()) : Tensor<T, D>();
  const T* h = hidden.value().data();
  const T* w = head.value().data();
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    const int64_t r0 = bounds[i], n = bounds[i + 1] - r0;
    MIL_RUN(D, matmul, GemmShape{n, vocab, dim, false, true}, logits.data(), h + r0 * dim, w);
    chunk_loss(r0, n, logits.data(), record);
    if (!record) continue;
    if (grad_hidden)  // dhidden[r0 : r0 + n] = dlogits head
      MIL_RUN(D, matmul, GemmShape{n, dim, vocab}, dhidden.data() + r0 * dim, logits.data(), w);
    if (grad_head) {  // dhead += dlogits^T hidden[r0 : r0 + n]
      GemmShape g{vocab, dim, n, true, false};
      g.beta = r0 > 0 ? 1.f : 0.f;
      MIL_RUN(D, matmul, g, dhead.data(), logits.data(), h + r0 * dim);
    }
  }
  if (record && grad_head && rows == 0) dhead.zero_();
  struct Node {
    Var<T, D> hidden, head;
    Tensor<T, D> dhidden, dhead;
    void backward() {
      if (dhidden.defined()) give_grad(hidden, std::move(dhidden));
      if (dhead.defined()) give_grad(head, std::move(dhead));
    }
  };
  if (record) tape.record(Node{hidden, head, std::move(dhidden), std::move(dhead)});
}

}  // namespace mil::ag
