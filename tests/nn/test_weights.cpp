// The parameter table and the typed weight views: every view is the store's tensor of the
// table's parameter, and a model that borrows another model's parameters shares their storage,
// computes what a copy computes, and trains only its own parameters.
#include <doctest/doctest.h>

#include <cstring>
#include <set>

#include <mil/distill/init_from_attention.hpp>
#include <mil/nn/hybrid.hpp>
#include <mil/optim/adamw.hpp>

#include "common/compare.hpp"

using namespace mil;

namespace {

nn::LlamaConfig tiny(bool tied, bool bias) {
  nn::LlamaConfig c;
  c.vocab = 37;
  c.d_model = 16;
  c.n_layers = 4;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 4;
  c.d_ff = 24;
  c.tied_embeddings = tied;
  c.attention_bias = bias;
  return c;
}

nn::HybridConfig hybrid(const nn::LlamaConfig& c, nn::MixerKind k) {
  nn::HybridConfig h;
  h.llama = c;
  h.attn_layers = {1, 3};
  h.mixer = k;
  h.mamba1_d_state = 4;
  return h;
}

std::vector<float> logits_of(const nn::HybridModel<float, Cpu>& m) {
  const int64_t seq = 7;
  auto ids = Tensor<int32_t, Cpu>::from(Shape{seq}, {3, 1, 4, 1, 5, 9, 2});
  ag::Tape tape;
  ag::NoGrad ng(tape);
  return m.forward(tape, ids, nn::sequence_positions<Cpu>(1, seq), 1, seq).value().to_vector();
}

}  // namespace

TEST_CASE("param table: every view is the store's tensor of its parameter") {
  for (bool tied : {true, false})
    for (bool bias : {false, true})
      for (auto h : {nn::all_attention(tiny(tied, bias)),
                     hybrid(tiny(tied, bias), nn::MixerKind::mamba2),
                     hybrid(tiny(tied, bias), nn::MixerKind::mamba1)}) {
        CAPTURE(tied);
        CAPTURE(bias);
        CAPTURE(h.n_mamba_layers());
        nn::HybridModel<float, Cpu> m(h);
        const auto table = nn::parameter_table(h);
        REQUIRE(table.size() == m.params().entries().size());
        std::set<std::string> keys;
        int64_t numel = 0;
        for (const auto& s : table) {
          CHECK(keys.insert(s.key()).second);  // names are unique
          const auto& view = m.weights()[s];
          const auto& stored = m.params()[s.key()];
          CHECK(view.value().data() == stored.value().data());
          CHECK(view.shape() == s.shape);
          numel += s.shape.numel();
        }
        CHECK(numel == m.params().numel());
        // Each layer binds the mixer its kind names; the others stay empty.
        for (int64_t l = 0; l < h.llama.n_layers; ++l) {
          const auto& w = m.weights().layers[size_t(l)];
          CHECK((w.kind == nn::LayerKind::attention) == h.is_attention(l));
          CHECK(w.attn.wqkv.defined() == h.is_attention(l));
          CHECK(w.attn.bqkv.defined() == (h.is_attention(l) && bias));
          CHECK(w.mamba2.in_proj.defined() == (w.kind == nn::LayerKind::mamba2));
          CHECK(w.mamba2.ssm_norm.defined() == (w.kind == nn::LayerKind::mamba2));
          CHECK(w.mamba1.dt_proj.defined() == (w.kind == nn::LayerKind::mamba1));
          CHECK(w.mlp.w_down.defined());
        }
        // A tied head is the embedding table itself.
        CHECK((m.weights().lm_head.value().data() == m.weights().tok_embeddings.value().data()) ==
              tied);
      }
  CHECK(nn::param_key(nn::Param::wqkv, 3) == "layers.3.wqkv");
  CHECK(nn::param_key(nn::Param::tok_embeddings) == "tok_embeddings");
}

TEST_CASE("borrowed parameters: a student shares its teacher's frozen MLPs, norms and embeddings") {
  for (auto kind : {nn::MixerKind::mamba2, nn::MixerKind::mamba1}) {
    CAPTURE(nn::mixer_name(kind));
    const auto c = tiny(true, false);
    nn::HybridModel<float, Cpu> teacher(nn::all_attention(c));
    teacher.init_random(3, 0.3f);
    const auto h = hybrid(c, kind);
    const auto copied = distill::init_from_attention(teacher, h, 7);
    auto shared = [](const nn::ParamSlot& s) {
      return s.param == nn::Param::w_gate_up || s.param == nn::Param::w_down ||
             s.param == nn::Param::mlp_norm || s.param == nn::Param::attn_norm ||
             s.param == nn::Param::tok_embeddings || s.param == nn::Param::norm;
    };
    nn::HybridModel<float, Cpu> student(h, teacher, shared);
    student.copy_owned_from(copied);

    // Storage: the borrowed views are the teacher's tensors; the store holds the rest only.
    int64_t borrowed = 0;
    for (const auto& s : nn::parameter_table(h)) {
      const float* mine = student.weights()[s].value().data();
      if (shared(s)) {
        borrowed += s.shape.numel();
        CHECK(mine == teacher.param(s.key()).value().data());
      } else {
        CHECK(mine != copied.weights()[s].value().data());
      }
    }
    CHECK(borrowed > 0);
    CHECK(student.params().numel() == copied.params().numel() - borrowed);
    CHECK(student.params().trainable_numel() == student.params().numel());

    // The same function as the copy, bitwise.
    const auto want = logits_of(copied);
    CHECK(test::bytes_of(logits_of(student)) == test::bytes_of(want));

    // Training moves the student's own parameters only; the teacher is untouched.
    const auto teacher_before = teacher.params().values().to_vector();
    const auto own_before = student.params().values().to_vector();
    optim::AdamW<float, Cpu> opt(student.params(), {});
    const int64_t seq = 7;
    auto ids = Tensor<int32_t, Cpu>::from(Shape{seq}, {3, 1, 4, 1, 5, 9, 2});
    auto targets = Tensor<int32_t, Cpu>::from(Shape{seq}, {1, 4, 1, 5, 9, 2, 6});
    ag::Tape tape;
    student.params().zero_grad();
    ag::cross_entropy(tape, student.forward(tape, ids, nn::sequence_positions<Cpu>(1, seq), 1, seq),
                      targets);
    tape.backward();
    opt.step(1e-2f);
    CHECK(teacher.params().values().to_vector() == teacher_before);
    CHECK(student.params().values().to_vector() != own_before);
    for (const auto& e : student.params().entries())
      if (!e.owned()) CHECK_FALSE(e.var.requires_grad());

    // A lender without the borrowed parameter's shape is refused.
    auto other = tiny(true, false);
    other.d_ff = 32;
    nn::HybridModel<float, Cpu> wrong(nn::all_attention(other));
    using Model = nn::HybridModel<float, Cpu>;
    CHECK_THROWS_WITH_AS(Model(h, wrong, shared),
                         doctest::Contains("borrowed parameter 'layers.0.w_gate_up'"), Error);
  }
}
