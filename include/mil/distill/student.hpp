#pragma once
// The student of a distillation stage: a hybrid that owns only the parameters it trains and
// borrows the rest from its teacher (the same tensors, not copies: a 50% student of SmolLM2 adds
// only its Mamba mixers to the teacher's memory). Stage 1 trains the Mamba mixers (docs/METHOD.md
// §5; optionally the kept attention too); stage 2 trains everything, so it owns everything.
#include <string>

#include "../nn/hybrid.hpp"
#include "init_from_attention.hpp"

namespace mil::distill {

enum class Trainable { mixers, mixers_attention, all };

inline const char* to_string(Trainable t) {
  switch (t) {
    case Trainable::mixers: return "mixers";
    case Trainable::mixers_attention: return "mixers+attention";
    case Trainable::all: return "all";
  }
  return "?";
}

inline Trainable parse_trainable(const std::string& s) {
  if (s == "mixers") return Trainable::mixers;
  if (s == "mixers+attention" || s == "mixers,attention") return Trainable::mixers_attention;
  if (s == "all") return Trainable::all;
  MIL_FAIL("unknown set of trainable parameters '", s, "': expected mixers, mixers+attention or all");
}

// Whether a parameter of `config` trains under `t` (the student owns it); the others are the
// teacher's, frozen.
inline bool trains(const nn::HybridConfig& config, const nn::ParamSlot& s, Trainable t) {
  if (t == Trainable::all) return true;
  if (s.layer < 0) return false;  // embeddings, final norm, LM head
  using nn::Param;
  const bool norm_or_mlp = s.param == Param::attn_norm || s.param == Param::mlp_norm ||
                           s.param == Param::w_gate_up || s.param == Param::w_down;
  if (norm_or_mlp) return false;
  if (!config.is_attention(s.layer)) return true;  // the Mamba mixer's own parameters
  return t == Trainable::mixers_attention;        // wqkv, bqkv, wo of a kept attention layer
}

// A student of shape `config` whose frozen parameters are `teacher`'s tensors and whose own
// parameters start from `init` (a full model of the same shape, e.g. init_from_attention's result
// or an earlier stage's student), rounded once into T on D.
template <Element T, Device D>
nn::HybridModel<T, D> make_student(const nn::HybridModel<T, D>& teacher,
                                   const nn::HybridConfig& config, Trainable t,
                                   const nn::HybridModel<float, Cpu>& init) {
  MIL_CHECK(init.config().llama.n_layers == config.llama.n_layers &&
                init.config().attn_layers == config.attn_layers,
            "make_student: the initial weights have another layer layout");
  nn::HybridModel<T, D> student(config, teacher,
                                [&](const nn::ParamSlot& s) { return !trains(config, s, t); });
  student.copy_owned_from(init);
  return student;
}

}  // namespace mil::distill
