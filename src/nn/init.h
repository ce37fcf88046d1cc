// Parameter allocation and PyTorch-style initialisation shared by the layers (internal).
#pragma once

#include <random>

#include "mpx/nn/layer.h"

namespace mpx::nn::detail {

// Allocates value (FP32), working copy (when compute is not FP32) and grad; fills value with
// U(-bound, bound) from `seed` (bound 0: zeros; fill_one: ones), then rounds the working copy.
void init_parameter(Parameter& p, const Shape& shape, Context& ctx, DType compute, float bound,
                    std::uint64_t seed, bool decay, bool fill_one = false);

// Whether data stored as `stored` must be copied (rounded or widened) before the backend reads it for a
// layer computing in `compute`.
bool needs_backend_copy(DType stored, DType compute);
// The pointer the backend reads for x: x itself when it is already what the backend wants, else x rounded
// to `compute` (or widened) into `scratch` (backend_dtype_for(compute), x's shape or larger).
const void* backend_input(const Tensor& x, const Tensor& scratch, DType compute);
// A workspace buffer of `shape` in the backend's dtype when needs_backend_copy, else an undefined tensor.
Tensor backend_scratch(const Shape& shape, DType stored, DType compute, Context& ctx);

// The dtype a matmul/convolution layer computing in `compute` writes its output in: the activation
// storage when the backend can write it directly (bf16 from bf16 inputs), else f32.
DType output_storage(DType compute, const Context& ctx);
// An FP32 workspace for an input gradient the backend cannot write in `stored` directly (bf16 activations
// into a layer computing in f32/f16), else an undefined tensor.
Tensor wide_gradient_scratch(const Shape& shape, DType stored, DType compute, Context& ctx);
// Rounds the FP32 tensor `src` into `dst` (same element count, dst's dtype).
void narrow_into(const Tensor& src, const Tensor& dst);

}  // namespace mpx::nn::detail
