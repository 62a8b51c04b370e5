#pragma once
// Var<T, D>: a tensor in the autograd graph. Its gradient is written by the backward passes of
// the ops that consumed it: the first write of a backward pass overwrites (no zero-fill needed),
// later writes accumulate. That write mode is tracked here and handed to each kernel explicitly.
#include <memory>
#include <string>
#include <utility>

#include "../core/tensor.hpp"

namespace mil::ag {

template <Element T, Device D>
class Var {
 public:
  Var() = default;
  explicit Var(Tensor<T, D> value, bool requires_grad = false, std::string name = {})
      : data_(std::make_shared<Data>()) {
    data_->value = std::move(value);
    data_->requires_grad = requires_grad;
    data_->name = std::move(name);
  }

  bool defined() const { return data_ != nullptr; }
  Tensor<T, D>& value() const { return data_->value; }
  const Shape& shape() const { return data_->value.shape(); }
  int64_t numel() const { return data_->value.numel(); }
  int64_t size(int i) const { return data_->value.size(i); }
  const std::string& name() const { return data_->name; }
  bool requires_grad() const { return data_ && data_->requires_grad; }
  void set_requires_grad(bool r) const { data_->requires_grad = r; }

  // The gradient as last written; undefined or stale unless has_grad().
  const Tensor<T, D>& grad() const { return data_->grad; }
  bool has_grad() const { return data_->grad_written; }

  // Where a backward pass writes this variable's gradient, and whether it must accumulate.
  // The gradient buffer is allocated on first use, or is the one bound with bind_grad().
  std::pair<Tensor<T, D>&, bool> grad_for_write() const {
    if (!data_->grad.defined()) data_->grad = Tensor<T, D>::empty(shape());
    bool accumulate = data_->grad_written;
    data_->grad_written = true;
    return {data_->grad, accumulate};
  }
  // Use `grad` (e.g. a view into a flat gradient buffer) as this variable's gradient storage.
  void bind_grad(Tensor<T, D> grad) const {
    check_same_shape("bind_grad", grad, value());
    data_->grad = std::move(grad);
  }
  // Takes g as the gradient when nothing was written yet and no buffer is bound (no copy);
  // returns false, leaving g untouched, otherwise.
  bool adopt_grad(Tensor<T, D>&& g) const {
    if (data_->grad_written || data_->grad.defined()) return false;
    check_same_shape("adopt_grad", g, value());
    data_->grad = std::move(g);
    data_->grad_written = true;
    return true;
  }
  // The next gradient write overwrites (an optimizer's zero_grad without touching memory).
  void clear_grad() const { data_->grad_written = false; }
  // Frees the gradient buffer of an intermediate (not a bound parameter gradient).
  void release_grad() const {
    data_->grad = Tensor<T, D>();
    data_->grad_written = false;
  }

 private:
  struct Data {
    Tensor<T, D> value;
    Tensor<T, D> grad;
    bool requires_grad = false;
    bool grad_written = false;
    std::string name;
  };
  std::shared_ptr<Data> data_;
};

}  // namespace mil::ag
