#pragma once
// Runtime shape of up to 4 dimensions; element counts are overflow-checked.
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "error.hpp"

namespace mil {

class Shape {
 public:
  static constexpr int max_rank = 4;
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) {
    MIL_CHECK(dims.size() <= max_rank, "a shape has at most 4 dimensions, got ", dims.size());
    for (int64_t d : dims) {
      MIL_CHECK(d >= 0, "negative dimension ", d);
      dims_[rank_++] = d;
    }
  }
  int rank() const { return rank_; }
  int64_t operator[](int i) const {
    MIL_CHECK(i >= 0 && i < rank_, "dimension index ", i, " out of range for rank ", rank_);
    return dims_[i];
  }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n = checked_mul(n, dims_[i]);
    return n;
  }
  Shape with_dim0(int64_t d0) const {
    Shape s = *this;
    s.dims_[0] = d0;
    return s;
  }
  bool operator==(const Shape& o) const {
    if (rank_ != o.rank_) return false;
    for (int i = 0; i < rank_; ++i)
      if (dims_[i] != o.dims_[i]) return false;
    return true;
  }
  std::string str() const {
    std::string s = "[";
    for (int i = 0; i < rank_; ++i) s += (i ? ", " : "") + std::to_string(dims_[i]);
    return s + "]";
  }

 private:
  std::array<int64_t, max_rank> dims_{};
  int rank_ = 0;
};

}  // namespace mil
