#pragma once
// AdamW over a ParameterStore's flat buffers: fp32 master weights and moments, decoupled weight
// decay, global-norm gradient clipping, parameter groups (own learning-rate scale and weight
// decay), frozen parameters skipped. A step is a handful of launches over contiguous runs of the
// flat buffer, not one per tensor. A non-finite gradient norm skips the update (and is counted),
// so a bad batch never corrupts the weights.
#include <cmath>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "../kernels/adamw.hpp"
#include "../kernels/global_norm.hpp"
#include "../nn/parameters.hpp"
#if defined(__CUDACC__)
#include "../kernels/adamw.cuh"
#include "../kernels/global_norm.cuh"
#endif

namespace mil::optim {

struct AdamWConfig {
  float beta1 = 0.9f, beta2 = 0.98f, eps = 1e-8f, weight_decay = 0.f;
  float max_grad_norm = 0.f;  // 0: no clipping
};

struct ParamGroup {
  std::string name;
  std::function<bool(const std::string&)> contains;  // which parameters belong to it
  float lr_scale = 1.f;
  float weight_decay = -1.f;  // < 0: the optimizer's default
};

struct StepResult {
  double grad_norm = 0;  // before clipping
  float lr = 0;
  bool skipped = false;  // non-finite gradient: no update
};

template <Element T, Device D>
class AdamW {
 public:
  AdamW(nn::ParameterStore<T, D>& store, AdamWConfig cfg, std::vector<ParamGroup> groups = {})
      : store_(store), cfg_(cfg) {
    int64_t n = store.numel();
    m_ = Tensor<float, D>::zeros(Shape{n});
    v_ = Tensor<float, D>::zeros(Shape{n});
    if constexpr (!master_is_param) {  // fp32 master copy of low-precision parameters
      auto host = store.values().template to<Cpu>();
      auto master = Tensor<float, Cpu>::empty(host.shape());
      for (int64_t i = 0; i < n; ++i) master[i] = float(to_acc(host[i]));
      master_ = master.template to<D>();
    }
    // Contiguous runs of trainable parameters in the same group become one update each.
    for (const auto& e : store.entries()) {
      if (!e.owned() || !e.var.requires_grad()) continue;  // borrowed parameters are frozen
      int g = -1;
      for (size_t i = 0; i < groups.size(); ++i)
        if (groups[i].contains(e.name)) { g = int(i); break; }
      float scale = g >= 0 ? groups[g].lr_scale : 1.f;
      float wd = g >= 0 && groups[g].weight_decay >= 0 ? groups[g].weight_decay : cfg.weight_decay;
      if (!runs_.empty() && runs_.back().group == g && runs_.back().end == e.offset)
        runs_.back().end += e.var.numel();
      else
        runs_.push_back({e.offset, e.offset + e.var.numel(), g, scale, wd});
    }
  }

  int64_t steps_taken() const { return step_; }
  int64_t steps_skipped() const { return skipped_; }

  // One update with base learning rate `lr`; consumes this step's gradients.
  StepResult step(float lr) {
    store_.finish_backward();
    StepResult r;
    r.lr = lr;
    double sum_sq = sum_of_squares(store_.grads());
    r.grad_norm = std::sqrt(sum_sq);
    if (!std::isfinite(r.grad_norm)) {
      r.skipped = true;
      ++skipped_;
      store_.zero_grad();
      return r;
    }
    float coef = cfg_.max_grad_norm > 0 ? cpu::clip_coefficient(sum_sq, cfg_.max_grad_norm) : 1.f;
    ++step_;
    for (const Run& run : runs_) {
      AdamWStep s{lr * run.lr_scale, cfg_.beta1, cfg_.beta2, cfg_.eps, run.weight_decay, step_, coef};
      update(run.begin, run.end - run.begin, s);
    }
    store_.zero_grad();
    return r;
  }

  // Optimizer state for checkpoints: first and second moments, the fp32 master weights of a
  // low-precision store (undefined for float parameters, which are their own masters) and the
  // counts. A resumed run restores all of them and continues bitwise.
  Tensor<float, D>& first_moment() { return m_; }
  Tensor<float, D>& second_moment() { return v_; }
  Tensor<float, D>& master_weights() { return master_; }
  void set_steps_taken(int64_t s) { step_ = s; }
  void set_steps_skipped(int64_t s) { skipped_ = s; }

 private:
  static constexpr bool master_is_param = std::is_same_v<T, float>;
  struct Run {
    int64_t begin, end;
    int group;
    float lr_scale, weight_decay;
  };

  static double sum_of_squares(const Tensor<T, D>& g) {
    if constexpr (std::is_same_v<D, Cpu>) {
      return cpu::sum_of_squares(g.data(), g.numel());
    } else {
#if defined(__CUDACC__)
      auto out = Tensor<float, D>::empty(Shape{1});
      cuda::sum_of_squares(out.data(), g.data(), g.numel(), cuda::current_stream());
      return double(out.to_vector()[0]);
#endif
    }
  }

  void update(int64_t off, int64_t n, const AdamWStep& s) {
    T* params = store_.values().data() + off;
    const T* grads = store_.grads().data() + off;
    float* m = m_.data() + off;
    float* v = v_.data() + off;
    if constexpr (std::is_same_v<D, Cpu>) {
      if constexpr (master_is_param) cpu::adamw_update(params, m, v, static_cast<T*>(nullptr), grads, n, s);
      else cpu::adamw_update(master_.data() + off, m, v, params, grads, n, s);
    } else {
#if defined(__CUDACC__)
      float* master = master_is_param ? reinterpret_cast<float*>(params) : master_.data() + off;
      T* copy = master_is_param ? nullptr : params;
      cuda::adamw_update(master, m, v, copy, grads, n, s, static_cast<const float*>(nullptr),
                         cuda::current_stream());
#endif
    }
  }

  nn::ParameterStore<T, D>& store_;
  AdamWConfig cfg_;
  Tensor<float, D> m_, v_, master_;
  std::vector<Run> runs_;
  int64_t step_ = 0, skipped_ = 0;
};

}  // namespace mil::optim
