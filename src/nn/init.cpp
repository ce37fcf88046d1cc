#include "init.h"

#include "mpx/core/error.h"
#include "mpx/numeric/convert.h"

namespace mpx::nn::detail {

void init_parameter(Parameter& p, const Shape& shape, Context& ctx, DType compute, float bound, std::uint64_t seed,
                    bool decay, bool fill_one) {
  if (p.value.defined()) return;  // planned before: keep the trained values
  const MemoryCategory value_category =
      ctx.policy.master_weights && compute != DType::f32 ? MemoryCategory::master_weights : MemoryCategory::weights;
  p.value = Tensor::empty(shape, DType::f32, value_category, &ctx.memory);
  p.grad = Tensor::zeros(shape, DType::f32, MemoryCategory::gradients, &ctx.memory);
  p.compute = compute;
  p.decay = decay;
  float* v = p.value.data_as<float>();
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uniform(-bound, bound);
  for (std::int64_t i = 0; i < p.value.numel(); ++i) v[i] = fill_one ? 1.0f : (bound > 0 ? uniform(rng) : 0.0f);
  if (compute != DType::f32) {
    p.working = Tensor::empty(shape, backend_dtype_for(compute), MemoryCategory::weights, &ctx.memory);
  }
  p.refresh(ctx.policy.master_weights);
}

bool needs_backend_copy(DType stored, DType compute) {
  return compute == DType::f16 || stored != backend_dtype_for(compute);
}

const void* backend_input(const Tensor& x, const Tensor& scratch, DType compute) {
  if (!needs_backend_copy(x.dtype(), compute)) return x.data();
  const auto count = static_cast<std::size_t>(x.numel());
  if (x.dtype() == DType::f32) {
    round_for_backend(x.data_as<float>(), scratch.data(), compute, count);
  } else {
    // BF16 activations into an FP32 backend: widen exactly (then round to FP16 for an FP16 layer).
    numeric::convert(x.data(), x.dtype(), scratch.data(), DType::f32, count);
    if (compute == DType::f16) round_for_backend(scratch.data_as<float>(), scratch.data(), compute, count);
  }
  return scratch.data();
}

Tensor backend_scratch(const Shape& shape, DType stored, DType compute, Context& ctx) {
  if (!needs_backend_copy(stored, compute)) return Tensor();
  return Tensor::empty(shape, backend_dtype_for(compute), MemoryCategory::workspace, &ctx.memory);
}

DType output_storage(DType compute, const Context& ctx) {
  const DType stored = activation_storage(ctx.policy);
  return stored == DType::bf16 && backend_dtype_for(compute) == DType::bf16 ? DType::bf16 : DType::f32;
}

Tensor wide_gradient_scratch(const Shape& shape, DType stored, DType compute, Context& ctx) {
  if (stored == DType::f32 || backend_dtype_for(compute) == stored) return Tensor();
  return Tensor::empty(shape, DType::f32, MemoryCategory::workspace, &ctx.memory);
}

void narrow_into(const Tensor& src, const Tensor& dst) {
  numeric::convert(src.data(), DType::f32, dst.data(), dst.dtype(), static_cast<std::size_t>(src.numel()));
}

}  // namespace mpx::nn::detail
