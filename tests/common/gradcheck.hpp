#pragma once
// Central-difference gradient check in double (dlib's test_layer, ggml's test-backend-ops idea):
// for a random cotangent g, d/dx_i dot(f(x), g) is estimated by (f(x + e) - f(x - e)) . g / 2e
// and compared with the analytic gradient by normalised error.
#include <functional>
#include <string>
#include <vector>

#include "compare.hpp"

namespace mil::test {

struct GradInput {
  std::string name;
  std::vector<double>* values;          // the input, perturbed in place during the check
  const std::vector<double>* analytic;  // the gradient the backward pass computed
};

// forward() recomputes the output from the current input values.
inline void check_gradients(const std::string& op, const std::vector<GradInput>& inputs,
                            const std::function<std::vector<double>()>& forward,
                            const std::vector<double>& g, double tol = 1e-6, double eps = 1e-5) {
  for (const GradInput& in : inputs) {
    REQUIRE(in.analytic->size() == in.values->size());
    std::vector<double> numeric(in.values->size());
    for (size_t i = 0; i < in.values->size(); ++i) {
      double keep = (*in.values)[i];
      (*in.values)[i] = keep + eps;
      auto plus = forward();
      (*in.values)[i] = keep - eps;
      auto minus = forward();
      (*in.values)[i] = keep;
      REQUIRE(plus.size() == g.size());
      double d = 0;
      for (size_t j = 0; j < g.size(); ++j) d += (plus[j] - minus[j]) * g[j];
      numeric[i] = d / (2 * eps);
    }
    require_close(op + " d/d" + in.name, *in.analytic, numeric, tol);
  }
}

}  // namespace mil::test
