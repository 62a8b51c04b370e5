#pragma once
// GQA-style expansion of groups of features: out group g is input group g / repeat.
//   out[r, (g * repeat + k) * group_size + i] = in[r, g * group_size + i]   (k < repeat)
// in is read with a row stride (a column block of a fused projection); out is packed
// [rows, groups * repeat * group_size]. Backward sums the repeats back into each input group.
#include <cstdint>

#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace mil {

struct RepeatGroupsShape {
  int64_t rows = 0, groups = 0, group_size = 0, repeat = 1;
  int64_t in_stride = 0;  // 0 = groups * group_size
  int64_t in_width() const { return groups * group_size; }
  int64_t out_width() const { return groups * repeat * group_size; }
  int64_t is() const { return in_stride ? in_stride : in_width(); }
};

inline void repeat_groups_check(const char* op, const RepeatGroupsShape& s) {
  MIL_CHECK(s.rows >= 0 && s.groups > 0 && s.group_size > 0 && s.repeat > 0, op,
            ": bad sizes rows=", s.rows, " groups=", s.groups, " group_size=", s.group_size,
            " repeat=", s.repeat);
  MIL_CHECK(s.is() >= s.in_width(), op, ": in_stride ", s.is(), " < ", s.in_width());
}

namespace cpu {

template <class T>
void repeat_groups_forward(T* out, const T* in, const RepeatGroupsShape& s) {
  repeat_groups_check("repeat_groups_forward", s);
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t j = 0; j < s.out_width(); ++j) {
      const int64_t g = j / (s.repeat * s.group_size), i = j % s.group_size;
      out[r * s.out_width() + j] = in[r * s.is() + g * s.group_size + i];
    }
}

// din uses in's stride.
template <class T>
void repeat_groups_backward(T* din, const T* dout, const RepeatGroupsShape& s, bool accumulate) {
  using A = acc_t<T>;
  repeat_groups_check("repeat_groups_backward", s);
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t j = 0; j < s.in_width(); ++j) {
      const int64_t g = j / s.group_size, i = j % s.group_size;
      A sum = 0;
      for (int64_t k = 0; k < s.repeat; ++k)
        sum += to_acc(dout[r * s.out_width() + (g * s.repeat + k) * s.group_size + i]);
      T& d = din[r * s.is() + j];
      d = T(accumulate ? to_acc(d) + sum : sum);
    }
}

}  // namespace cpu
}  // namespace mil
