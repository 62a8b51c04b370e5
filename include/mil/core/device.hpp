#pragma once
// Device tags: tensors and ops are configured at compile time by element type and device.
#include <concepts>
#include <string_view>

namespace mil {

struct Cpu { static constexpr std::string_view name = "cpu"; };
struct Cuda { static constexpr std::string_view name = "cuda"; };

template <class D>
concept Device = std::same_as<D, Cpu> || std::same_as<D, Cuda>;

}  // namespace mil
