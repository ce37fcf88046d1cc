#include "init.h"

#include <vector>

#include "mpx/core/error.h"

namespace mpx::nn::detail {

void init_parameter(Parameter& p, const Shape& shape, Context& ctx, DType compute, float bound, std::uint64_t seed,
                    bool decay, bool fill_one) {
  if (p.value.defined()) return;  // planned before: keep the trained values
  const MemoryCategory value_category =
      ctx.policy.master_weights && compute != DType::f32 ? MemoryCategory::master_weights : MemoryCategory::weights;
  backend::Backend& backend = ctx.backend();
  p.value = ctx.allocate(shape, DType::f32, value_category);
  p.grad = ctx.allocate(shape, DType::f32, MemoryCategory::gradients);
  backend.fill_zero(p.grad);
  p.compute = compute;
  p.decay = decay;
  std::vector<float> v(static_cast<std::size_t>(p.value.numel()));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uniform(-bound, bound);
  for (float& x : v) x = fill_one ? 1.0f : (bound > 0 ? uniform(rng) : 0.0f);
  backend.upload(p.value, v.data());
  if (compute != DType::f32) p.working = ctx.allocate(shape, backend.operand_dtype(compute), MemoryCategory::weights);
  p.refresh(backend, ctx.policy.master_weights);
}

Tensor filled(const Shape& shape, float value, MemoryCategory category, Context& ctx) {
  Tensor t = ctx.allocate(shape, DType::f32, category);
  const std::vector<float> host(static_cast<std::size_t>(t.numel()), value);
  ctx.backend().upload(t, host.data());
  return t;
}

bool needs_operand_copy(const backend::Backend& backend, DType stored, DType compute) {
  const DType read = backend.operand_dtype(compute);
  return stored != read || read != compute;  // read != compute: FP16 values held as FP32 (CPU)
}

const void* operand(backend::Backend& backend, const Tensor& x, const Tensor& scratch, DType compute) {
  if (!needs_operand_copy(backend, x.dtype(), compute)) return x.data();
  if (x.dtype() == DType::f32) {
    backend.round_for_compute(x, scratch, compute);
  } else {
    // Low-precision activations into a wider or other operand: convert exactly (or round once), then
    // round to FP16 where FP16 values are held as FP32.
    backend.convert(x, scratch);
    if (compute != scratch.dtype()) backend.round_for_compute(scratch, scratch, compute);
  }
  return scratch.data();
}

Tensor operand_scratch(const Shape& shape, DType stored, DType compute, Context& ctx) {
  if (!needs_operand_copy(ctx.backend(), stored, compute)) return Tensor();
  return ctx.allocate(shape, ctx.backend().operand_dtype(compute), MemoryCategory::workspace);
}

DType output_storage(DType compute, const Context& ctx) {
  return ctx.backend().product_output_dtype(compute, ctx.activation_dtype());
}

Tensor wide_gradient_scratch(const Shape& shape, DType stored, DType compute, Context& ctx) {
  if (ctx.backend().product_output_dtype(compute, stored) == stored) return Tensor();
  return ctx.allocate(shape, DType::f32, MemoryCategory::workspace);
}

DType plan_product_buffers(const TensorSpec& in, const Shape& out, DType compute, Context& ctx, ProductBuffers b) {
  const DType out_dtype = output_storage(compute, ctx);
  b.output = ctx.allocate(out, out_dtype, MemoryCategory::activations);
  b.grad_input = ctx.allocate(in.shape, in.dtype, MemoryCategory::activations);
  b.grad_input_wide = wide_gradient_scratch(in.shape, in.dtype, compute, ctx);
  b.input_copy = operand_scratch(in.shape, in.dtype, compute, ctx);
  b.grad_output_copy = operand_scratch(out, out_dtype, compute, ctx);
  return out_dtype;
}

void require_dtype(const Tensor& t, DType expected, const std::string& layer, const char* what) {
  if (t.dtype() != expected) {
    throw InvalidArgument("layer " + layer + " got a " + std::string(name(t.dtype())) + " " + what +
                          "; it was planned for " + std::string(name(expected)));
  }
}

}  // namespace mpx::nn::detail
