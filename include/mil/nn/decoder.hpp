#pragma once
// Inference for any model (a Transformer is the all-attention hybrid): one step plan, on the CPU
// or the GPU, for a batch of sequences ("slots") that each have their own length.
//
// A step is a list of rows, each some tokens of one slot from a given position (like
// llama.cpp's llama_batch): a prefill of several prompts, a batched decode (one token per slot)
// and the verification of k drafted tokens on n slots are all one call, with logits for the rows
// the caller asks for (the last token of a row, all of its tokens, or none).
//
// Everything a step touches is allocated once, in the constructor: for attention layers the KV
// cache [attention layers, slots, max_seq, kv_heads * head_dim] for keys and for values; for Mamba
// layers a conv ring of the last inputs [slots, ring_len, channels] and the fp32 SSM state per
// slot; activations for `max_tokens` tokens (prefill() runs a longer prompt in chunks); logits for
// `max_logits` rows; and, per slot, `snapshots` saved copies of the Mamba states, which
// save_state / restore_state copy on the device (no transfer to the host), so a caller can try
// tokens and go back (speculative decoding). A Mamba layer keeps no past tokens, so without a
// snapshot a hybrid's sequence can be reset but not truncated to a shorter non-empty prefix
// (can_rewind()). The conv ring holds kernel - 1 + max_rollback inputs: enough to roll the conv
// back by max_rollback tokens by position alone.
//
// The blocks are nn/blocks.hpp's step-plan forms. On the CPU every product is row-invariant
// (cpu::linear_rows, and cpu::quant_linear_rows on a GGUF model's block-format weights), so
// verifying k tokens in one step gives bitwise the logits of k decode steps.
// On the GPU the decoder runs on its own stream. A step whose rows all continue their sequences
// with the same number of tokens (decode, verification) is captured as a CUDA graph the first time
// its shape is seen (after one eager run that creates the cuBLASLt plans) and replayed after that:
// token ids, slots and positions go into fixed device buffers from pinned host memory, the
// kernels read them on the device, and the greedy argmax comes back in the graph.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "../kernels/topk.hpp"
#include "hybrid.hpp"
#if defined(__CUDACC__)
#include "../core/cuda_launch.hpp"
#include "../kernels/topk.cuh"
#endif

namespace mil::nn {

struct DecoderOptions {
  int64_t slots = 1;         // sequences held at once
  int64_t max_seq = 2048;    // tokens per sequence (prompt + generated)
  int64_t max_tokens = 512;  // tokens per step (at least `slots`); prefill() runs longer prompts
                             // in chunks of this
  int64_t max_logits = 0;    // logit rows per step; 0: one per slot (decode). Verification of
                             // k tokens on n slots needs n * (k + 1); evaluation max_tokens
  int64_t snapshots = 0;     // saved Mamba states per slot (save_state / restore_state)
  int64_t max_rollback = 0;  // extra conv-ring rows: the conv rolls back this far by position
  bool cuda_graphs = true;   // capture uniform steps (GPU)
  bool fused_rows = true;    // GPU steps of at most 8 rows on the fused decode products
                             // (false: the unfused kernels, for comparison)
  bool block_weights = true; // float CPU: products on the model's block-format weights where it
                             // has them (a GGUF file's quantised layers); false: float weights
  bool q8_activations = false;  // with block weights: their products take the activations
                                // quantised to 8 bits (faster, not the float path's results;
                                // kernels/quant_rows_q8.hpp)
};

// Per logits row: its k best (ids, values; kernels/topk.hpp) and its log-sum-exp.
struct RowTopK {
  int32_t k = 0;
  std::vector<int32_t> ids;   // [rows, k]
  std::vector<float> values;  // [rows, k]
  std::vector<float> logsumexp;  // [rows]
  std::span<const int32_t> ids_of(int64_t row) const { return std::span(ids).subspan(size_t(row * k), size_t(k)); }
  std::span<const float> values_of(int64_t row) const {
    return std::span(values).subspan(size_t(row * k), size_t(k));
  }
};

// Which logits a row of a step asks for.
enum class RowLogits { none, last, all };

struct StepRow {
  int32_t slot = 0;
  std::span<const int32_t> ids;
  int64_t start = -1;  // position of the first token; -1: the slot's length (continue it);
                       // 0 starts the sequence afresh
  RowLogits logits = RowLogits::last;
};

template <Element T, Device D>
class Decoder {
 public:
  static constexpr size_t kGraphTokensPerRow = 16;  // longer rows run eagerly

  Decoder(const HybridModel<T, D>& model, DecoderOptions o = {})
      : weights_(model.weights()), hybrid_(model.config()), cfg_(hybrid_.llama), opt_(o) {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<D, Cpu>)
      if (o.block_weights) blocks_ = model.block_weights();
    MIL_CHECK(blocks_ || model.has_float_weights(), "Decoder: the model keeps some weights in block "
              "format only (loaded for CPU inference): they need the block products of a float CPU "
              "decoder (DecoderOptions::block_weights)");
    MIL_CHECK(o.slots >= 1 && o.max_seq >= 1 && o.max_tokens >= 1 && o.max_logits >= 0 &&
                  o.snapshots >= 0 && o.max_rollback >= 0,
              "Decoder: slots (", o.slots, "), max_seq (", o.max_seq, ") and max_tokens (",
              o.max_tokens, ") must be >= 1, max_logits (", o.max_logits, "), snapshots (",
              o.snapshots, ") and max_rollback (", o.max_rollback, ") >= 0");
    MIL_CHECK(o.slots <= (int64_t(1) << 20) && o.max_seq <= (int64_t(1) << 30),
              "Decoder: ", o.slots, " slots of ", o.max_seq, " tokens is beyond any use");
    StreamScope scope(*this);
    tokens_cap_ = std::max(o.max_tokens, o.slots);
    logits_cap_ = std::min(o.max_logits > 0 ? o.max_logits : o.slots, tokens_cap_);
    const int64_t kvw = cfg_.n_kv_heads * cfg_.head_dim;
    for (int64_t l = 0; l < cfg_.n_layers; ++l)
      state_index_.push_back(hybrid_.is_attention(l) ? n_attention_++ : n_mamba_++);
    Shape cache{std::max<int64_t>(n_attention_, 1), o.slots, n_attention_ ? o.max_seq : 1, kvw};
    k_cache_ = Tensor<T, D>::zeros(cache);
    v_cache_ = Tensor<T, D>::zeros(cache);
    x_ = Tensor<T, D>::empty(Shape{tokens_cap_, cfg_.d_model});
    logit_x_ = Tensor<T, D>::empty(Shape{logits_cap_, cfg_.d_model});
    scratch_ = StepScratch<T, D>(hybrid_, tokens_cap_);
    scratch_.fused_rows = o.fused_rows;
    MIL_CHECK(!o.q8_activations || (blocks_ && blocks_->has_q8_parts()), "Decoder: 8-bit activations "
              "need block weights with integer codes (a GGUF file's Q8_0, Q4_0, Q4_1, Q4_K or Q6_K "
              "layers, decoded on the CPU in float)");
    if (o.q8_activations) scratch_.q8.emplace();
    if (n_mamba_) {
      ring_len_ = hybrid_.conv_kernel - 1 + o.max_rollback;
      state_size_ = hybrid_.mixer == MixerKind::mamba2
                        ? mamba2_dims(hybrid_, 1, 1).ssd().state_size()
                        : hybrid_.d_inner() * hybrid_.mamba1_d_state;
      conv_ring_ = Tensor<T, D>::zeros(Shape{n_mamba_ * o.slots, ring_len_, hybrid_.conv_channels()});
      ssm_state_ = Tensor<float, D>::zeros(Shape{n_mamba_ * o.slots, state_size_});
      if (o.snapshots) {
        ring_snap_ = Tensor<T, D>::zeros(
            Shape{o.snapshots * n_mamba_ * o.slots, ring_len_, hybrid_.conv_channels()});
        ssm_snap_ = Tensor<float, D>::zeros(Shape{o.snapshots * n_mamba_ * o.slots, state_size_});
      }
    }
    snap_lengths_.assign(size_t(o.snapshots * o.slots), -1);
    logits_ = Tensor<T, D>::empty(Shape{logits_cap_, cfg_.vocab});
    // ids | slots | positions (per token) | logit rows | row slots | row starts
    token_words_ = 3 * tokens_cap_ + logits_cap_ + 2 * o.slots;
    tokens_ = Tensor<int32_t, D>::empty(Shape{token_words_});
    argmax_ = Tensor<int32_t, D>::empty(Shape{logits_cap_});
    lengths_.assign(size_t(o.slots), 0);
    if constexpr (std::is_same_v<D, Cpu>) {
      host_tokens_ = tokens_.data();
      host_argmax_ = argmax_.data();
    }
#if defined(__CUDACC__)
    if constexpr (std::is_same_v<D, Cuda>) {
      // The split-key attention's workspace for the largest step of any row count; its
      // counters start at zero (each call leaves them so).
      int64_t floats = 0, counters = 0;
      for (int64_t n = 1; n <= tokens_cap_; ++n) {
        const KvAttentionShape s{n, cfg_.n_heads, cfg_.n_kv_heads, cfg_.head_dim,
                                 cfg_.qkv_layout().width(), o.slots, o.max_seq, 1.f};
        floats = std::max(floats, cuda::kv_attention_workspace(s));
        counters = std::max(counters, cuda::kv_attention_counters(s));
      }
      workspace_ = Tensor<float, D>::empty(Shape{std::max<int64_t>(floats, 1)});
      counters_ = Tensor<int32_t, D>::zeros(Shape{std::max<int64_t>(counters, 1)});
      MIL_CUDA_CHECK(cudaMallocHost(&host_tokens_, size_t(token_words_) * sizeof(int32_t)));
      MIL_CUDA_CHECK(cudaMallocHost(&host_argmax_, size_t(logits_cap_) * sizeof(int32_t)));
    }
#endif
  }
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;
  ~Decoder() {
#if defined(__CUDACC__)
    if constexpr (std::is_same_v<D, Cuda>) {
      cudaStreamSynchronize(stream_);
      for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g);
      cudaFreeHost(host_tokens_);
      cudaFreeHost(host_argmax_);
      // The tensors go back to the caching allocator; nothing runs on the stream any more.
      k_cache_ = {}, v_cache_ = {}, x_ = {}, logit_x_ = {}, logits_ = {}, tokens_ = {};
      argmax_ = {}, workspace_ = {}, counters_ = {}, conv_ring_ = {}, ring_snap_ = {}, ssm_state_ = {};
      ssm_snap_ = {}, scratch_ = {};
      if (stream_) cudaStreamDestroy(stream_);
    }
#endif
  }

  const LlamaConfig& config() const { return cfg_; }
  const HybridConfig& hybrid_config() const { return hybrid_; }
  const DecoderOptions& options() const { return opt_; }
  int64_t max_tokens() const { return tokens_cap_; }
  int64_t max_logits() const { return logits_cap_; }
  int64_t length(int64_t slot) const { return lengths_.at(size_t(check_slot(slot))); }
  void reset(int64_t slot) { truncate(slot, 0); }
  // Whether truncate() can keep a non-empty prefix: only without Mamba layers, whose state holds
  // no past tokens to go back to (restore_state() goes back to a saved state instead).
  bool can_rewind() const { return n_mamba_ == 0; }
  // Forgets all but the first n tokens of a sequence (a chat turn that is re-rendered differently).
  void truncate(int64_t slot, int64_t n) {
    const int64_t len = length(slot);
    MIL_CHECK(n >= 0 && n <= len, "Decoder::truncate: ", n, " tokens of a sequence of ", len);
    MIL_CHECK(n == 0 || n == len || can_rewind(), "Decoder::truncate: a hybrid ",
              "with Mamba layers cannot go back to ", n, " of ", len,
              " tokens (its state keeps no past tokens); reset the sequence and prefill again, ",
              "or restore a saved state");
    lengths_[size_t(slot)] = n;
  }

  // Saves the Mamba states (conv ring and SSM state of every Mamba layer) and the length of
  // `slot` into snapshot `snapshot`; restore_state puts them back. The KV cache needs no copy: a
  // later step only writes positions past the saved length. Device-side copies on the decoder's
  // stream.
  void save_state(int64_t slot, int64_t snapshot = 0) { copy_state(slot, snapshot, true); }
  void restore_state(int64_t slot, int64_t snapshot = 0) { copy_state(slot, snapshot, false); }

  // Runs one step. Each row appends its tokens to its slot from position `start` (the slot's
  // length by default; 0 starts the sequence afresh; an all-attention model may also go back to
  // any earlier position). Slots are distinct within a step. Afterwards the logits rows are, in
  // row order, the predictions after the tokens each row asked for (logit_offset(i) is row i's
  // first); argmax() holds their greedy choices.
  void step(std::span<const StepRow> rows) {
    plan(rows);
    StreamScope scope(*this);
    for (const StepRow& r : rows)  // a fresh sequence starts from zero SSM states
      if (resolved_start(r) == 0) zero_state(r.slot);
    upload_tokens();
    run();
    for (const StepRow& r : rows) lengths_[size_t(r.slot)] = resolved_start(r) + int64_t(r.ids.size());
    finish();
  }

  // Appends `ids` to sequence `slot` in steps of at most max_tokens tokens; afterwards logits
  // row 0 (and argmax()[0]) is the prediction after its last token.
  void prefill(int64_t slot, std::span<const int32_t> ids) {
    check_slot(slot);
    MIL_CHECK(!ids.empty(), "Decoder::prefill: no tokens");
    check_room(slot, length(slot), int64_t(ids.size()));
    check_ids(ids);
    for (size_t first = 0; first < ids.size(); first += size_t(tokens_cap_)) {
      const size_t n = std::min(size_t(tokens_cap_), ids.size() - first);
      const bool last = first + n == ids.size();
      const StepRow row{int32_t(slot), ids.subspan(first, n), -1,
                        last ? RowLogits::last : RowLogits::none};
      step(std::span(&row, 1));
    }
  }

  // One token per sequence: ids[i] is appended to slot slots[i] (distinct slots); afterwards
  // logits row i is the prediction for slots[i].
  void decode(std::span<const int32_t> slots, std::span<const int32_t> ids) {
    MIL_CHECK(!ids.empty() && slots.size() == ids.size(), "Decoder::decode: ", slots.size(),
              " slots for ", ids.size(), " tokens");
    std::vector<StepRow> rows(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) rows[i] = {slots[i], ids.subspan(i, 1)};
    step(rows);
  }

  // Logits of the last step: [logit_rows(), vocab] on D.
  Tensor<T, D> logits() const { return logits_.slice(0, logit_rows_); }
  int64_t logit_rows() const { return logit_rows_; }
  // The first logits row of row i of the last step.
  int64_t logit_offset(size_t row) const { return logit_offsets_.at(row); }

  // The logits as floats on the host.
  std::vector<float> logits_host() const {
    const int64_t n = logit_rows_ * cfg_.vocab;
    std::vector<float> out(static_cast<size_t>(n));
    if constexpr (std::is_same_v<D, Cpu>) {
      for (int64_t i = 0; i < n; ++i) out[size_t(i)] = float(to_acc(logits_.data()[i]));
    } else {
      auto host = logits_.slice(0, logit_rows_).template to<Cpu>();
      for (int64_t i = 0; i < n; ++i) out[size_t(i)] = float(to_acc(host.data()[i]));
    }
    return out;
  }

  // Greedy choice for each logits row, computed on the device.
  std::span<const int32_t> argmax() const { return {host_argmax_, size_t(logit_rows_)}; }

  // The k best logits of each row of the last step among its first `cols` columns, with the
  // rows' log-sum-exp (kernels/topk.hpp), computed where the logits are: on the GPU a sampler
  // then needs k values per row on the host instead of the whole row.
  RowTopK topk_host(int32_t k, int64_t cols) {
    MIL_CHECK(cols >= 1 && cols <= cfg_.vocab, "Decoder::topk_host: ", cols, " columns of ", cfg_.vocab);
    const int64_t rows = logit_rows_;
    RowTopK out{k, std::vector<int32_t>(size_t(rows * k)), std::vector<float>(size_t(rows * k)),
                std::vector<float>(size_t(rows))};
    if constexpr (std::is_same_v<D, Cpu>) {
      cpu::topk_rows(out.ids.data(), out.values.data(), out.logsumexp.data(), logits_.data(), rows,
                     cols, cfg_.vocab, k);
    } else {
#if defined(__CUDACC__)
      StreamScope scope(*this);
      auto ids = Tensor<int32_t, D>::empty(Shape{std::max<int64_t>(rows * k, 1)});
      auto values = Tensor<float, D>::empty(Shape{std::max<int64_t>(rows * k, 1)});
      auto lse = Tensor<float, D>::empty(Shape{std::max<int64_t>(rows, 1)});
      cuda::topk_rows(ids.data(), values.data(), lse.data(), logits_.data(), rows, cols, cfg_.vocab,
                      k, stream_);
      const auto copy = [&](auto* dst, const auto& src, int64_t n) {
        MIL_CUDA_CHECK(cudaMemcpyAsync(dst, src.data(), size_t(n) * sizeof(*dst),
                                       cudaMemcpyDeviceToHost, stream_));
      };
      copy(out.ids.data(), ids, rows * k);
      copy(out.values.data(), values, rows * k);
      copy(out.logsumexp.data(), lse, rows);
      MIL_CUDA_CHECK(cudaStreamSynchronize(stream_));
#endif
    }
    return out;
  }

 private:
  // Makes the decoder's stream (created on first use) current for the kernels and allocations of
  // one call.
  struct StreamScope {
#if defined(__CUDACC__)
    std::optional<cuda::StreamScope> scope;
    explicit StreamScope(Decoder& d) {
      if constexpr (std::is_same_v<D, Cuda>) {
        if (!d.stream_) MIL_CUDA_CHECK(cudaStreamCreateWithFlags(&d.stream_, cudaStreamNonBlocking));
        scope.emplace(d.stream_);
      }
    }
#else
    explicit StreamScope(Decoder&) {}
#endif
  };

  int64_t check_slot(int64_t slot) const {
    MIL_CHECK(slot >= 0 && slot < opt_.slots, "Decoder: slot ", slot, " of ", opt_.slots);
    return slot;
  }
  void check_room(int64_t slot, int64_t start, int64_t n) const {
    MIL_CHECK(start + n <= opt_.max_seq, "Decoder: sequence ", slot, " has ", start, " tokens; ",
              n, " more exceed the context of ", opt_.max_seq);
  }
  void check_ids(std::span<const int32_t> ids) const {
    for (size_t i = 0; i < ids.size(); ++i)
      MIL_CHECK(ids[i] >= 0 && ids[i] < cfg_.vocab, "Decoder: token id ", ids[i],
                " at position ", i, " is outside the vocabulary [0, ", cfg_.vocab, ")");
  }
  int64_t resolved_start(const StepRow& r) const {
    return r.start < 0 ? lengths_[size_t(r.slot)] : r.start;
  }

  // Validates a step and writes its token, row and logit arrays into the host staging buffer.
  void plan(std::span<const StepRow> rows) {
    MIL_CHECK(!rows.empty(), "Decoder::step: no rows");
    MIL_CHECK(int64_t(rows.size()) <= opt_.slots, "Decoder::step: ", rows.size(),
              " rows, the decoder holds ", opt_.slots, " sequences");
    std::vector<bool> seen(size_t(opt_.slots), false);
    int64_t tokens = 0, logit_rows = 0;
    for (const StepRow& r : rows) {
      check_slot(r.slot);
      MIL_CHECK(!seen[size_t(r.slot)], "Decoder::step: slot ", r.slot, " appears twice");
      seen[size_t(r.slot)] = true;
      MIL_CHECK(!r.ids.empty(), "Decoder::step: no tokens for slot ", r.slot);
      const int64_t len = lengths_[size_t(r.slot)], start = resolved_start(r);
      MIL_CHECK(start >= 0 && start <= len, "Decoder::step: slot ", r.slot, " has ", len,
                " tokens; a row cannot start at position ", start);
      MIL_CHECK(start == len || start == 0 || can_rewind(), "Decoder::step: slot ", r.slot,
                " has ", len, " tokens; a hybrid with Mamba layers continues a sequence or ",
                "starts it afresh, not at position ", start, " (restore a saved state instead)");
      check_room(r.slot, start, int64_t(r.ids.size()));
      check_ids(r.ids);
      tokens += int64_t(r.ids.size());
      logit_rows += r.logits == RowLogits::all ? int64_t(r.ids.size())
                    : r.logits == RowLogits::last ? 1 : 0;
    }
    MIL_CHECK(tokens <= tokens_cap_, "Decoder::step: ", tokens, " tokens, a step holds at most ",
              tokens_cap_, " (DecoderOptions::max_tokens)");
    MIL_CHECK(logit_rows <= logits_cap_, "Decoder::step: ", logit_rows, " logit rows, a step ",
              "gives at most ", logits_cap_, " (DecoderOptions::max_logits)");

    int32_t* ids = host_tokens_;
    int32_t* slots = ids + tokens_cap_;
    int32_t* positions = slots + tokens_cap_;
    int32_t* logit_index = positions + tokens_cap_;
    int32_t* row_slots = logit_index + logits_cap_;
    int32_t* row_starts = row_slots + opt_.slots;
    step_.count = tokens;
    step_.groups.clear();
    logit_offsets_.clear();
    int64_t t = 0, l = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      const StepRow& r = rows[i];
      const int64_t n = int64_t(r.ids.size()), start = resolved_start(r);
      row_slots[i] = r.slot;
      row_starts[i] = int32_t(start);
      logit_offsets_.push_back(l);
      for (int64_t j = 0; j < n; ++j) {
        ids[t + j] = r.ids[size_t(j)];
        slots[t + j] = r.slot;
        positions[t + j] = int32_t(start + j);
        if (r.logits == RowLogits::all || (r.logits == RowLogits::last && j == n - 1))
          logit_index[l++] = int32_t(t + j);
      }
      if (!step_.groups.empty() && step_.groups.back().seq == n)
        ++step_.groups.back().batch;
      else
        step_.groups.push_back({t, int64_t(i), 1, n});
      t += n;
    }
    logit_rows_ = l;
    step_.fresh_single_row = rows.size() == 1 && resolved_start(rows[0]) == 0;
    // Logits rows that are consecutive tokens are read in place; others are gathered first.
    logits_in_place_ = l == 0 || logit_index[l - 1] - logit_index[0] == l - 1;
    logits_first_ = l ? logit_index[0] : 0;
    // CUDA graphs for steps whose host-side decisions depend only on (rows, tokens per row,
    // logits): every row continues its sequence with the same number of tokens, and few of them
    // (decode, verification; a prompt's chunks are long enough that launches do not matter).
    graph_key_ = {0, 0, 0};
    bool uniform = step_.groups.size() == 1 && rows[0].ids.size() <= kGraphTokensPerRow;
    for (const StepRow& r : rows)
      uniform = uniform && resolved_start(r) > 0 && r.logits == rows[0].logits;
    if (uniform)
      graph_key_ = {int64_t(rows.size()), int64_t(rows[0].ids.size()), int(rows[0].logits)};
  }

  // Device pointers of the staged arrays.
  StepTokens device_tokens() {
    StepTokens t = step_;
    t.ids = tokens_.data();
    t.slots = t.ids + tokens_cap_;
    t.positions = t.slots + tokens_cap_;
    t.row_slots = t.positions + tokens_cap_ + logits_cap_;
    t.row_starts = t.row_slots + opt_.slots;
    return t;
  }

  void upload_tokens() {
#if defined(__CUDACC__)
    if constexpr (std::is_same_v<D, Cuda>)
      MIL_CUDA_CHECK(cudaMemcpyAsync(tokens_.data(), host_tokens_,
                                     size_t(token_words_) * sizeof(int32_t),
                                     cudaMemcpyHostToDevice, stream_));
#endif
  }

  // Waits for the step and makes argmax() valid.
  void finish() {
#if defined(__CUDACC__)
    if constexpr (std::is_same_v<D, Cuda>) MIL_CUDA_CHECK(cudaStreamSynchronize(stream_));
#endif
  }

  // Copies `count` blocks of `elems` elements between strided places on the decoder's device.
  template <class E>
  void copy_blocks(E* dst, const E* src, int64_t count, int64_t elems, int64_t dst_stride,
                   int64_t src_stride) {
    if constexpr (std::is_same_v<D, Cpu>) {
      for (int64_t i = 0; i < count; ++i)
        std::memcpy(dst + i * dst_stride, src + i * src_stride, size_t(elems) * sizeof(E));
    } else {
#if defined(__CUDACC__)
      MIL_CUDA_CHECK(cudaMemcpy2DAsync(dst, size_t(dst_stride) * sizeof(E), src,
                                       size_t(src_stride) * sizeof(E), size_t(elems) * sizeof(E),
                                       size_t(count), cudaMemcpyDeviceToDevice, stream_));
#endif
    }
  }

  void zero_state(int64_t slot) {
    for (int64_t m = 0; m < n_mamba_; ++m) {
      const int64_t row = m * opt_.slots + slot;
      ssm_state_.slice(row, row + 1).zero_();
    }
  }

  void copy_state(int64_t slot, int64_t snapshot, bool save) {
    check_slot(slot);
    MIL_CHECK(snapshot >= 0 && snapshot < opt_.snapshots, "Decoder: snapshot ", snapshot, " of ",
              opt_.snapshots, " (DecoderOptions::snapshots)");
    int64_t& saved = snap_lengths_[size_t(snapshot * opt_.slots + slot)];
    if (save) {
      saved = lengths_[size_t(slot)];
    } else {
      MIL_CHECK(saved >= 0, "Decoder::restore_state: snapshot ", snapshot, " of slot ", slot,
                " was never saved");
      lengths_[size_t(slot)] = saved;
    }
    if (!n_mamba_) return;
    StreamScope scope(*this);
    const int64_t ring = ring_len_ * hybrid_.conv_channels();
    const int64_t stride_ring = opt_.slots * ring, stride_ssm = opt_.slots * state_size_;
    T* live_ring = conv_ring_.data() + slot * ring;
    T* snap_ring = ring_snap_.data() + (snapshot * n_mamba_ * opt_.slots + slot) * ring;
    float* live_ssm = ssm_state_.data() + slot * state_size_;
    float* snap_ssm = ssm_snap_.data() + (snapshot * n_mamba_ * opt_.slots + slot) * state_size_;
    if (save) {
      copy_blocks(snap_ring, live_ring, n_mamba_, ring, stride_ring, stride_ring);
      copy_blocks(snap_ssm, live_ssm, n_mamba_, state_size_, stride_ssm, stride_ssm);
    } else {
      copy_blocks(live_ring, snap_ring, n_mamba_, ring, stride_ring, stride_ring);
      copy_blocks(live_ssm, snap_ssm, n_mamba_, state_size_, stride_ssm, stride_ssm);
    }  // stream-ordered before the next step: no wait, so a captured sequence may include it
  }

  void run() {
#if defined(__CUDACC__)
    if constexpr (std::is_same_v<D, Cuda>) {
      if (opt_.cuda_graphs && std::get<0>(graph_key_) > 0) {
        auto it = graphs_.find(graph_key_);
        if (it != graphs_.end()) {
          MIL_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
          return;
        }
        forward();  // eager: creates the GEMM plans and workspaces
        cudaGraph_t graph{};
        MIL_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
        try {
          forward();
        } catch (...) {
          cudaStreamEndCapture(stream_, &graph);
          if (graph) cudaGraphDestroy(graph);
          throw;
        }
        MIL_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
        cudaGraphExec_t exec{};
        MIL_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        cudaGraphDestroy(graph);
        graphs_[graph_key_] = exec;
        return;
      }
    }
#endif
    forward();
  }

  const BlockLayer* block_layer(int64_t l) const { return blocks_ ? &blocks_->layers[size_t(l)] : nullptr; }
  // The embedding rows come from the block-format LM head they are tied to: the same values as
  // the float table (both dequantise the file's rows), which a CPU-inference model does not hold.
  bool embeddings_in_blocks() const {
    return blocks_ && cfg_.tied_embeddings && !blocks_->lm_head.empty();
  }

  // The staged step through every layer, then the logits of the rows asked for.
  void forward() {
    const StepTokens t = device_tokens();
    const int64_t d = cfg_.d_model, layer_cache = opt_.slots * opt_.max_seq * cfg_.n_kv_heads * cfg_.head_dim;
    T* x = x_.data();
    if (embeddings_in_blocks()) {
      if constexpr (std::is_same_v<T, float> && std::is_same_v<D, Cpu>)
        for (int64_t i = 0; i < t.count; ++i) blocks_->lm_head.dequantize_row(t.ids[i], x + i * d);
    } else {
      MIL_RUN(D, embedding_forward, x, weights_.tok_embeddings.value().data(), t.ids, t.count, d,
              cfg_.vocab);
    }
    for (int64_t l = 0; l < cfg_.n_layers; ++l) {
      const LayerWeights<T, D>& w = weights_.layers[size_t(l)];
      const int64_t i = state_index_[size_t(l)];
      if (w.kind == LayerKind::attention) {
        const KvLayer<T> cache{k_cache_.data() + i * layer_cache, v_cache_.data() + i * layer_cache,
                               opt_.slots, opt_.max_seq};
        attention_step(x, scratch_, w, cfg_, t, cache, KvWorkspace{workspace_.data(), counters_.data()},
                       block_layer(l));
      } else {
        const int64_t ring = ring_len_ * hybrid_.conv_channels();
        const MambaLayerState<T> st{conv_ring_.data() + i * opt_.slots * ring, ring_len_,
                                    ssm_state_.data() + i * opt_.slots * state_size_, opt_.slots};
        mamba_step(x, scratch_, w, hybrid_, t, st);
      }
      mlp_step(x, scratch_, w.mlp, cfg_, t.count, block_layer(l));
    }
    if (logit_rows_ == 0) return;
    const T* rows = x + logits_first_ * d;
    if (!logits_in_place_) {  // gather the rows asked for (an embedding lookup into x)
      const int32_t* index = t.positions + tokens_cap_;
      MIL_RUN(D, embedding_forward, logit_x_.data(), x, index, logit_rows_, d, t.count);
      rows = logit_x_.data();
    }
    logits_step(logits_.data(), argmax_.data(), rows, scratch_, weights_, cfg_, logit_rows_,
                blocks_ ? &blocks_->lm_head : nullptr);
#if defined(__CUDACC__)
    if constexpr (std::is_same_v<D, Cuda>)
      MIL_CUDA_CHECK(cudaMemcpyAsync(host_argmax_, argmax_.data(),
                                     size_t(logit_rows_) * sizeof(int32_t),
                                     cudaMemcpyDeviceToHost, stream_));
#endif
  }

  ModelWeights<T, D> weights_;  // views: the model's tensors, shared
  std::shared_ptr<const BlockWeights> blocks_;  // the model's, shared; null: float products
  HybridConfig hybrid_;
  LlamaConfig cfg_;
  DecoderOptions opt_;
  int64_t tokens_cap_ = 0, logits_cap_ = 0, token_words_ = 0, logit_rows_ = 0;
  Tensor<T, D> k_cache_, v_cache_, x_, logit_x_, logits_;
  StepScratch<T, D> scratch_;
  // Mamba layers: conv rings [mamba layers * slots, ring_len, channels], fp32 SSM states
  // [mamba layers * slots, state]; snapshots of both [snapshots * mamba layers * slots, ...].
  Tensor<T, D> conv_ring_, ring_snap_;
  Tensor<float, D> ssm_state_, ssm_snap_;
  int64_t n_attention_ = 0, n_mamba_ = 0, ring_len_ = 0, state_size_ = 0;
  std::vector<int64_t> state_index_;  // per layer: its index among the attention or Mamba layers
  std::vector<int64_t> snap_lengths_;  // [snapshot, slot]: saved length, -1 = never saved
  Tensor<int32_t, D> tokens_, argmax_;
  Tensor<float, D> workspace_;     // GPU attention_kv_cache's (empty on the CPU)
  Tensor<int32_t, D> counters_;    // and its counters
  std::vector<int64_t> lengths_;
  // The step being run (host side).
  StepTokens step_;
  std::vector<int64_t> logit_offsets_;
  bool logits_in_place_ = true;
  int64_t logits_first_ = 0;
  std::tuple<int64_t, int64_t, int> graph_key_{0, 0, 0};
  int32_t* host_tokens_ = nullptr;  // staging of tokens_ (pinned on the GPU)
  int32_t* host_argmax_ = nullptr;
#if defined(__CUDACC__)
  cudaStream_t stream_ = nullptr;
  std::map<std::tuple<int64_t, int64_t, int>, cudaGraphExec_t> graphs_;
#endif
};

}  // namespace mil::nn
