#include <cmath>
#include <string>

#include "init.h"
#include "mpx/core/error.h"
#include "mpx/nn/layers.h"

namespace mpx::nn {

Linear::Linear(std::string name, std::int64_t in_features, std::int64_t out_features, std::uint64_t init_seed)
    : Layer(std::move(name)), in_(in_features), out_(out_features) {
  own_weight_.name = this->name() + ".weight";
  bias_.name = this->name() + ".bias";
  seed_ = init_seed;
}

std::unique_ptr<Linear> Linear::tied(std::string name, Parameter& shared, std::int64_t in_features,
                                     std::int64_t out_features) {
  auto layer = std::make_unique<Linear>(std::move(name), in_features, out_features, 0);
  layer->shared_ = &shared;
  ++shared.uses;
  return layer;
}

std::vector<Parameter*> Linear::parameters() {
  if (shared_) return {};  // listed by the layer that owns it
  return {&own_weight_, &bias_};
}

namespace {
// A tied weight planned by its owner: checks its shape and gives it the working copy this layer reads.
void adopt_shared_weight(Parameter& w, const Shape& shape, DType compute, Context& ctx, const std::string& layer) {
  if (!w.value.defined() || w.value.shape() != shape) {
    throw InvalidArgument("layer " + layer + " shares " + w.name + ", which " +
                          (w.value.defined() ? "is " + to_string(w.value.shape()) + ", not " + to_string(shape)
                                             : std::string("is not planned yet (plan the layer that owns it first)")));
  }
  if (compute == w.compute || compute == DType::f32) return;
  if (w.compute != DType::f32) {
    throw InvalidArgument("layer " + layer + " computes in " + std::string(name(compute)) + " but its tied weight " +
                          w.name + " is already used in " + std::string(name(w.compute)));
  }
  w.compute = compute;
  w.working = ctx.allocate(shape, ctx.backend().operand_dtype(compute), MemoryCategory::weights);
  w.refresh(ctx.backend(), ctx.policy.master_weights);
}
}  // namespace

TensorSpec Linear::plan(const TensorSpec& in, Context& ctx) {
  const Shape& input = in.shape;
  if (input.size() < 2 || input.back() != in_) {
    throw InvalidArgument("layer " + name() + " (linear " + std::to_string(in_) + " -> " + std::to_string(out_) +
                          ") got input of shape " + to_string(input) + "; expected [N, " + std::to_string(in_) + "]");
  }
  const DType compute = ctx.policy.compute_for(name());
  if (shared_) {
    adopt_shared_weight(*shared_, {out_, in_}, compute, ctx, name());
  } else {
    // PyTorch's default initialisation: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
    const float bound = 1.0f / std::sqrt(static_cast<float>(in_));
    detail::init_parameter(own_weight_, {out_, in_}, ctx, compute, init_bound_ > 0 ? init_bound_ : bound, seed_, true);
    detail::init_parameter(bias_, {out_}, ctx, DType::f32, zero_bias_ ? 0.0f : bound, seed_ + 1, true);
  }
  Shape out = input;
  out.back() = out_;
  ctx.backend().require(backend::Op::matmul, compute, name());
  ctx.backend().require(backend::Op::column_sums, detail::output_storage(compute, ctx), name());
  const DType out_dtype = detail::plan_product_buffers(
      in, out, compute, ctx, {output_, grad_input_, grad_input_wide_, input_, grad_output_});
  return {out, out_dtype};
}

Tensor Linear::forward(const Tensor& x, Context& ctx, bool) {
  const std::int64_t n = x.dim(0), rows = x.numel() / in_;
  Parameter& w = weight();
  detail::require_dtype(x, grad_input_.dtype(), name(), "input");
  saved_input_ = input_.defined() ? input_.first_rows(n) : x;
  const void* in = detail::operand(ctx.backend(), x, saved_input_, w.compute);
  Tensor y = output_.first_rows(n);
  ctx.backend().matmul(in, false, w.backend_data(), true, w.backend_dtype(), y.data(), rows, out_, in_,
                       has_bias() ? bias_.value.data_as<float>() : nullptr, false, y.dtype());
  return y;
}

Tensor Linear::backward(const Tensor& dy, Context& ctx) {
  const std::int64_t n = dy.dim(0), rows = dy.numel() / out_;
  Parameter& w = weight();
  const DType compute = w.compute;
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  const Tensor dy_backend = grad_output_.defined() ? grad_output_.first_rows(n) : dy;
  backend::Backend& backend = ctx.backend();
  const void* g = detail::operand(backend, dy, dy_backend, compute);
  const DType bdt = w.backend_dtype();
  Tensor dx;
  if (input_gradient_needed()) {
    dx = grad_input_.first_rows(n);
    const Tensor target = grad_input_wide_.defined() ? grad_input_wide_.first_rows(n) : dx;
    backend.matmul(g, false, w.backend_data(), false, bdt, target.data(), rows, in_, out_, nullptr, false,
                   target.dtype());
    if (grad_input_wide_.defined()) backend.convert(target, dx);
  }
  // A tied weight's gradient adds to what its other use left (zeroed by the model before backward).
  backend.matmul(g, true, saved_input_.data(), false, bdt, w.grad.data_as<float>(), out_, in_, rows, nullptr,
                 w.uses > 1);
  if (has_bias()) backend.column_sums(dy, bias_.grad);
  return dx;
}

}  // namespace mpx::nn
