// Parameter allocation and PyTorch-style initialisation shared by the layers (internal).
#pragma once

#include <random>

#include "mpx/nn/layer.h"

namespace mpx::nn::detail {

// Allocates value (FP32), working copy (when compute is not FP32) and grad; fills value with
// U(-bound, bound) from `seed` (bound 0: zeros; fill_one: ones), then rounds the working copy.
void init_parameter(Parameter& p, const Shape& shape, Context& ctx, DType compute, float bound,
                    std::uint64_t seed, bool decay, bool fill_one = false);

// Rounds x into `scratch` for the backend when compute is not FP32; returns the pointer the backend reads.
const void* backend_input(const Tensor& x, const Tensor& scratch, DType compute);

}  // namespace mpx::nn::detail
