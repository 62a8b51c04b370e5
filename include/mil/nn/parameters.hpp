#pragma once
// ParameterStore: all parameters of a model in one flat value buffer and one flat gradient buffer,
// each parameter a view into both. One flat buffer lets the optimizer, the gradient norm and
// checkpoints run as single launches instead of one per tensor.
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "../autograd/variable.hpp"
#include "../core/rng.hpp"

namespace mil::nn {

struct ParamSpec {
  std::string name;
  Shape shape;
};

template <Element T, Device D>
class ParameterStore {
 public:
  using Var = ag::Var<T, D>;
  struct Entry {
    std::string name;
    Var var;
    int64_t offset;  // in elements, into the flat buffers; -1 when borrowed or omitted
    bool owned() const { return offset >= 0; }
  };

  explicit ParameterStore(const std::vector<ParamSpec>& specs) : ParameterStore(specs, nullptr, {}) {}

  // An inference store: no gradient buffer, and the parameters for which omit(name) is true hold
  // no elements (Tensor::shape_only: their values are kept in another form, e.g. block format).
  static ParameterStore inference(const std::vector<ParamSpec>& specs,
                                  const std::function<bool(const std::string&)>& omit) {
    return ParameterStore(specs, nullptr, {}, omit, false);
  }

  // A store that holds only some of its parameters: those for which borrow(name) is true are the
  // lender's tensors (the same storage, so a student shares its teacher's frozen MLPs instead of
  // copying them). Borrowed parameters are frozen and lie outside values() and grads(), so an
  // optimizer of this store keeps moments for its own parameters only.
  ParameterStore(const std::vector<ParamSpec>& specs, const ParameterStore* lender,
                 const std::function<bool(const std::string&)>& borrow)
      : ParameterStore(specs, lender, borrow, {}, true) {}

  const Var& operator[](const std::string& name) const {
    auto it = index_.find(name);
    MIL_CHECK(it != index_.end(), "no parameter named '", name, "'");
    return entries_[it->second].var;
  }
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  const std::vector<Entry>& entries() const { return entries_; }
  Tensor<T, D>& values() { return values_; }
  const Tensor<T, D>& values() const { return values_; }
  Tensor<T, D>& grads() { return grads_; }
  int64_t numel() const { return values_.numel(); }
  int64_t trainable_numel() const {
    int64_t n = 0;
    for (const auto& e : entries_) n += e.owned() && e.var.requires_grad() ? e.var.numel() : 0;
    return n;
  }

  // Marks every gradient as unwritten: the next backward overwrites instead of accumulating.
  void zero_grad() {
    for (auto& e : entries_)
      if (e.owned()) e.var.clear_grad();
  }
  // After backward: gradients nobody wrote (unused or frozen parameters) become zero, so the flat
  // gradient buffer holds exactly this step's gradients.
  void finish_backward() {
    for (auto& e : entries_)
      if (e.owned() && !e.var.has_grad()) grads_.slice(e.offset, e.offset + e.var.numel()).zero_();
  }

 private:
  ParameterStore(const std::vector<ParamSpec>& specs, const ParameterStore* lender,
                 const std::function<bool(const std::string&)>& borrow,
                 const std::function<bool(const std::string&)>& omit, bool grads) {
    MIL_CHECK(!borrow || lender, "ParameterStore: borrowing needs a lender");
    auto borrowed = [&](const ParamSpec& s) { return lender && borrow && borrow(s.name); };
    auto omitted = [&](const ParamSpec& s) { return omit && omit(s.name); };
    int64_t total = 0;
    for (const auto& s : specs)
      if (!borrowed(s) && !omitted(s)) total = checked_add(total, s.shape.numel());
    values_ = Tensor<T, D>::empty(Shape{total});
    if (grads) grads_ = Tensor<T, D>::zeros(Shape{total});
    int64_t offset = 0;
    for (const auto& s : specs) {
      MIL_CHECK(!index_.count(s.name), "duplicate parameter name '", s.name, "'");
      index_[s.name] = entries_.size();
      if (omitted(s)) {
        entries_.push_back({s.name, Var(Tensor<T, D>::shape_only(s.shape), false, s.name), -1});
        continue;
      }
      if (borrowed(s)) {
        const Var& src = (*lender)[s.name];
        MIL_CHECK(src.shape() == s.shape, "ParameterStore: borrowed parameter '", s.name,
                  "' has shape ", src.shape().str(), " in the lender, ", s.shape.str(), " here");
        entries_.push_back({s.name, Var(src.value(), false, s.name), -1});
        continue;
      }
      int64_t n = s.shape.numel();
      Var v(values_.slice(offset, offset + n).view(s.shape), grads, s.name);
      if (grads) v.bind_grad(grads_.slice(offset, offset + n).view(s.shape));
      entries_.push_back({s.name, v, offset});
      offset += n;
    }
  }

  Tensor<T, D> values_, grads_;
  std::vector<Entry> entries_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace mil::nn
