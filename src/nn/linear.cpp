#include <cmath>
#include <string>

#include "init.h"
#include "mpx/core/error.h"
#include "mpx/nn/layers.h"

namespace mpx::nn {

Linear::Linear(std::string name, std::int64_t in_features, std::int64_t out_features, std::uint64_t init_seed)
    : Layer(std::move(name)), in_(in_features), out_(out_features) {
  weight_.name = this->name() + ".weight";
  bias_.name = this->name() + ".bias";
  seed_ = init_seed;
}

Shape Linear::plan(const Shape& input, Context& ctx) {
  if (input.size() != 2 || input[1] != in_) {
    throw InvalidArgument("layer " + name() + " (linear " + std::to_string(in_) + " -> " + std::to_string(out_) +
                          ") got input of shape " + to_string(input) + "; expected [N, " + std::to_string(in_) + "]");
  }
  const DType compute = ctx.policy.compute_for(name());
  // PyTorch's default initialisation: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
  const float bound = 1.0f / std::sqrt(static_cast<float>(in_));
  detail::init_parameter(weight_, {out_, in_}, ctx, compute, bound, seed_, true);
  detail::init_parameter(bias_, {out_}, ctx, DType::f32, bound, seed_ + 1, true);
  const std::int64_t n = input[0];
  output_ = Tensor::empty({n, out_}, DType::f32, MemoryCategory::activations, &ctx.memory);
  grad_input_ = Tensor::empty({n, in_}, DType::f32, MemoryCategory::activations, &ctx.memory);
  if (compute != DType::f32) {
    input_ = Tensor::empty({n, in_}, backend_dtype_for(compute), MemoryCategory::workspace, &ctx.memory);
    grad_output_ = Tensor::empty({n, out_}, backend_dtype_for(compute), MemoryCategory::workspace, &ctx.memory);
  }
  return {n, out_};
}

Tensor Linear::forward(const Tensor& x, Context& ctx, bool) {
  const std::int64_t n = x.dim(0);
  const DType compute = weight_.compute;
  saved_input_ = compute == DType::f32 ? x : input_.first_rows(n);
  const void* in = detail::backend_input(x, saved_input_, compute);
  Tensor y = output_.first_rows(n);
  ctx.backend.matmul(in, false, weight_.backend_data(), true, weight_.backend_dtype(), y.data_as<float>(), n, out_,
                     in_, bias_.value.data_as<float>());
  return y;
}

Tensor Linear::backward(const Tensor& dy, Context& ctx) {
  const std::int64_t n = dy.dim(0);
  const DType compute = weight_.compute;
  const Tensor dy_backend = compute == DType::f32 ? dy : grad_output_.first_rows(n);
  const void* g = detail::backend_input(dy, dy_backend, compute);
  const DType bdt = weight_.backend_dtype();
  Tensor dx;
  if (input_gradient_needed()) {
    dx = grad_input_.first_rows(n);
    ctx.backend.matmul(g, false, weight_.backend_data(), false, bdt, dx.data_as<float>(), n, in_, out_);
  }
  ctx.backend.matmul(g, true, saved_input_.data(), false, bdt, weight_.grad.data_as<float>(), out_, in_, n);
  const float* d = dy.data_as<float>();
  float* db = bias_.grad.data_as<float>();
  for (std::int64_t j = 0; j < out_; ++j) db[j] = 0.0f;
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < out_; ++j) db[j] += d[i * out_ + j];
  }
  return dx;
}

}  // namespace mpx::nn
