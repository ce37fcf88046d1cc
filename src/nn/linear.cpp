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

TensorSpec Linear::plan(const TensorSpec& in, Context& ctx) {
  const Shape& input = in.shape;
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
  const DType out_dtype = detail::output_storage(compute, ctx);
  ctx.backend().require(backend::Op::matmul, compute, name());
  ctx.backend().require(backend::Op::column_sums, out_dtype, name());
  output_ = ctx.allocate({n, out_}, out_dtype, MemoryCategory::activations);
  grad_input_ = ctx.allocate({n, in_}, in.dtype, MemoryCategory::activations);
  grad_input_wide_ = detail::wide_gradient_scratch({n, in_}, in.dtype, compute, ctx);
  input_ = detail::operand_scratch({n, in_}, in.dtype, compute, ctx);
  grad_output_ = detail::operand_scratch({n, out_}, out_dtype, compute, ctx);
  return {{n, out_}, out_dtype};
}

Tensor Linear::forward(const Tensor& x, Context& ctx, bool) {
  const std::int64_t n = x.dim(0);
  const DType compute = weight_.compute;
  detail::require_dtype(x, grad_input_.dtype(), name(), "input");
  saved_input_ = input_.defined() ? input_.first_rows(n) : x;
  const void* in = detail::operand(ctx.backend(), x, saved_input_, compute);
  Tensor y = output_.first_rows(n);
  ctx.backend().matmul(in, false, weight_.backend_data(), true, weight_.backend_dtype(), y.data(), n, out_, in_,
                     bias_.value.data_as<float>(), false, y.dtype());
  return y;
}

Tensor Linear::backward(const Tensor& dy, Context& ctx) {
  const std::int64_t n = dy.dim(0);
  const DType compute = weight_.compute;
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  const Tensor dy_backend = grad_output_.defined() ? grad_output_.first_rows(n) : dy;
  backend::Backend& backend = ctx.backend();
  const void* g = detail::operand(backend, dy, dy_backend, compute);
  const DType bdt = weight_.backend_dtype();
  Tensor dx;
  if (input_gradient_needed()) {
    dx = grad_input_.first_rows(n);
    const Tensor target = grad_input_wide_.defined() ? grad_input_wide_.first_rows(n) : dx;
    backend.matmul(g, false, weight_.backend_data(), false, bdt, target.data(), n, in_, out_, nullptr, false,
                   target.dtype());
    if (grad_input_wide_.defined()) backend.convert(target, dx);
  }
  backend.matmul(g, true, saved_input_.data(), false, bdt, weight_.grad.data_as<float>(), out_, in_, n);
  backend.column_sums(dy, bias_.grad);
  return dx;
}

}  // namespace mpx::nn
