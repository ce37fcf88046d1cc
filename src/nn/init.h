// Parameter allocation and PyTorch-style initialisation shared by the layers, and the rules for what a
// product reads and writes on the context's backend (internal to src/nn).
#pragma once

#include <random>
#include <string>

#include "mpx/nn/layer.h"

namespace mpx::nn::detail {

// Allocates value (FP32), working copy (when compute is not FP32) and grad on the context's backend; fills
// value with U(-bound, bound) from `seed` (bound 0: zeros; fill_one: ones), then rounds the working copy.
void init_parameter(Parameter& p, const Shape& shape, Context& ctx, DType compute, float bound,
                    std::uint64_t seed, bool decay, bool fill_one = false);
// A tensor on the context's backend holding `value` in every element (FP32).
Tensor filled(const Shape& shape, float value, MemoryCategory category, Context& ctx);

// Whether data stored as `stored` must be copied (rounded or widened) before the backend reads it for a
// layer computing in `compute`.
bool needs_operand_copy(const backend::Backend& backend, DType stored, DType compute);
// The pointer the backend reads for x: x itself when it is already what the backend wants, else x rounded
// to `compute` (or widened) into `scratch` (operand_dtype(compute), x's shape).
const void* operand(backend::Backend& backend, const Tensor& x, const Tensor& scratch, DType compute);
// A workspace buffer of `shape` in the backend's operand dtype when needs_operand_copy, else undefined.
Tensor operand_scratch(const Shape& shape, DType stored, DType compute, Context& ctx);

// The dtype a matmul/convolution layer computing in `compute` writes its output in.
DType output_storage(DType compute, const Context& ctx);
// An FP32 workspace for an input gradient the backend cannot write in `stored` directly, else undefined.
Tensor wide_gradient_scratch(const Shape& shape, DType stored, DType compute, Context& ctx);

// A product layer's (linear, convolution) buffers for `in` -> `out` computing in `compute`: the output (its
// dtype returned), the input gradient, and the scratch copies the backend needs (undefined when none).
struct ProductBuffers {
  Tensor& output;
  Tensor& grad_input;
  Tensor& grad_input_wide;  // FP32 input gradient when the backend cannot write the input's dtype
  Tensor& input_copy;       // the input as the backend reads it
  Tensor& grad_output_copy;
};
DType plan_product_buffers(const TensorSpec& in, const Shape& out, DType compute, Context& ctx, ProductBuffers b);

// Throws InvalidArgument naming the layer when a tensor's dtype is not the one planned.
void require_dtype(const Tensor& t, DType expected, const std::string& layer, const char* what);

}  // namespace mpx::nn::detail
