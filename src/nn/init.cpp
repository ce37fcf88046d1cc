#include "init.h"

#include "mpx/core/error.h"

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

const void* backend_input(const Tensor& x, const Tensor& scratch, DType compute) {
  if (compute == DType::f32) return x.data();
  round_for_backend(x.data_as<float>(), scratch.data(), compute, static_cast<std::size_t>(x.numel()));
  return scratch.data();
}

}  // namespace mpx::nn::detail
