// BatchNorm2d on NHWC: per-channel statistics over N*H*W rows (the backend's batch_norm op); parameters,
// statistics and running statistics FP32 whatever the policy.
#include <string>

#include "init.h"
#include "mpx/core/error.h"
#include "mpx/nn/layers.h"

namespace mpx::nn {

BatchNorm2d::BatchNorm2d(std::string name, std::int64_t channels, float momentum, float eps, bool fused_relu)
    : Layer(std::move(name)), channels_(channels), momentum_(momentum), eps_(eps), fused_relu_(fused_relu) {
  gamma_.name = this->name() + ".weight";
  beta_.name = this->name() + ".bias";
}

TensorSpec BatchNorm2d::plan(const TensorSpec& in, Context& ctx) {
  const Shape& input = in.shape;
  if (input.size() != 4 || input[3] != channels_) {
    throw InvalidArgument("layer " + name() + " (batch_norm2d, " + std::to_string(channels_) +
                          " channels) got input of shape " + to_string(input) + "; expected NHWC [N, H, W, " +
                          std::to_string(channels_) + "]");
  }
  ctx.backend().require(backend::Op::batch_norm, in.dtype, name());
  // Normalisation parameters and statistics are FP32 whatever the policy.
  detail::init_parameter(gamma_, {channels_}, ctx, DType::f32, 0.0f, 0, true, /*fill_one=*/true);
  detail::init_parameter(beta_, {channels_}, ctx, DType::f32, 0.0f, 0, true);
  if (!running_mean_.defined()) {
    running_mean_ = detail::filled({channels_}, 0.0f, MemoryCategory::weights, ctx);
    running_var_ = detail::filled({channels_}, 1.0f, MemoryCategory::weights, ctx);
  }
  pending_mean_ = ctx.allocate({channels_}, DType::f32, MemoryCategory::weights);
  pending_var_ = ctx.allocate({channels_}, DType::f32, MemoryCategory::weights);
  pending_ = false;
  mean_ = ctx.allocate({channels_}, DType::f32, MemoryCategory::activations);
  inv_std_ = ctx.allocate({channels_}, DType::f32, MemoryCategory::activations);
  output_ = ctx.allocate(input, in.dtype, MemoryCategory::activations);
  grad_input_ = ctx.allocate(input, in.dtype, MemoryCategory::activations);
  return in;
}

backend::BatchNormState BatchNorm2d::state() const {
  return {gamma_.value, beta_.value, running_mean_, running_var_, mean_, inv_std_};
}

Tensor BatchNorm2d::forward(const Tensor& x, Context& ctx, bool training) {
  detail::require_dtype(x, output_.dtype(), name(), "input");
  using Running = Context::RunningStatistics;
  last_ = {eps_, momentum_, fused_relu_, training, ctx.running_statistics != Running::keep};
  input_ = x;
  Tensor y = output_.first_rows(x.dim(0));
  backend::BatchNormState s = state();
  if (training && ctx.running_statistics == Running::defer) {
    // Blend into copies of the running statistics: the same arithmetic, committed or dropped by end_step.
    ctx.backend().convert(running_mean_, pending_mean_);
    ctx.backend().convert(running_var_, pending_var_);
    s.running_mean = pending_mean_;
    s.running_var = pending_var_;
    pending_ = true;
  }
  ctx.backend().batch_norm_forward(x, last_, s, y);
  return y;
}

void BatchNorm2d::end_step(Context& ctx, bool applied) {
  if (pending_ && applied) {
    ctx.backend().convert(pending_mean_, running_mean_);
    ctx.backend().convert(pending_var_, running_var_);
  }
  pending_ = false;
}

Tensor BatchNorm2d::backward(const Tensor& dy, Context& ctx) {
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  Tensor dx = grad_input_.first_rows(dy.dim(0));
  ctx.backend().batch_norm_backward(input_, dy, last_, state(), dx, gamma_.grad, beta_.grad);
  return dx;
}

}  // namespace mpx::nn
