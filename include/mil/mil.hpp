#pragma once
// Umbrella header: everything mil offers to plain C++ code. CUDA launchers live in the .cuh
// headers next to each CPU header and are included by .cu translation units.
#include "core/config.hpp"
#include "core/device.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/shape.hpp"
#include "core/tensor.hpp"
