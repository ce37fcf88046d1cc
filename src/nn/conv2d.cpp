#include <cmath>
#include <string>

#include "init.h"
#include "mpx/core/error.h"
#include "mpx/nn/layers.h"

namespace mpx::nn {

Conv2d::Conv2d(std::string name, std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel,
               std::int64_t stride, std::int64_t padding, std::uint64_t init_seed)
    : Layer(std::move(name)), seed_(init_seed) {
  shape_.in_channels = in_channels;
  shape_.out_channels = out_channels;
  shape_.kernel = kernel;
  shape_.stride = stride;
  shape_.padding = padding;
  weight_.name = this->name() + ".weight";
  bias_.name = this->name() + ".bias";
}

TensorSpec Conv2d::plan(const TensorSpec& in, Context& ctx) {
  const Shape& input = in.shape;
  if (input.size() != 4 || input[3] != shape_.in_channels) {
    throw InvalidArgument("layer " + name() + " (conv2d, " + std::to_string(shape_.in_channels) +
                          " input channels) got input of shape " + to_string(input) + "; expected NHWC [N, H, W, " +
                          std::to_string(shape_.in_channels) + "]");
  }
  shape_.batch = input[0];
  shape_.height = input[1];
  shape_.width = input[2];
  if (shape_.out_height() < 1 || shape_.out_width() < 1) {
    throw InvalidArgument("layer " + name() + ": a " + std::to_string(shape_.kernel) + "x" +
                          std::to_string(shape_.kernel) + " kernel does not fit input " + to_string(input));
  }
  const DType compute = ctx.policy.compute_for(name());
  const auto fan_in = static_cast<float>(shape_.in_channels * shape_.kernel * shape_.kernel);
  const float bound = 1.0f / std::sqrt(fan_in);  // PyTorch's default for weight and bias
  detail::init_parameter(weight_, {shape_.out_channels, shape_.in_channels, shape_.kernel, shape_.kernel}, ctx,
                         compute, bound, seed_, true);
  detail::init_parameter(bias_, {shape_.out_channels}, ctx, DType::f32, bound, seed_ + 1, true);
  const Shape out = {shape_.batch, shape_.out_height(), shape_.out_width(), shape_.out_channels};
  ctx.backend().require(backend::Op::conv2d, compute, name());
  const DType out_dtype = detail::plan_product_buffers(
      in, out, compute, ctx, {output_, grad_input_, grad_input_wide_, input_, grad_output_});
  return {out, out_dtype};
}

Tensor Conv2d::forward(const Tensor& x, Context& ctx, bool) {
  backend::ConvShape s = shape_;
  s.batch = x.dim(0);
  const DType compute = weight_.compute;
  detail::require_dtype(x, grad_input_.dtype(), name(), "input");
  saved_input_ = input_.defined() ? input_.first_rows(s.batch) : x;
  const void* in = detail::operand(ctx.backend(), x, saved_input_, compute);
  Tensor y = output_.first_rows(s.batch);
  ctx.backend().conv2d_forward(s, in, weight_.backend_data(), weight_.backend_dtype(), bias_.value.data_as<float>(),
                               y.data(), y.dtype());
  return y;
}

Tensor Conv2d::backward(const Tensor& dy, Context& ctx) {
  backend::ConvShape s = shape_;
  s.batch = dy.dim(0);
  const DType compute = weight_.compute;
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  const Tensor dy_backend = grad_output_.defined() ? grad_output_.first_rows(s.batch) : dy;
  backend::Backend& backend = ctx.backend();
  const void* g = detail::operand(backend, dy, dy_backend, compute);
  Tensor dx;
  if (input_gradient_needed()) {
    dx = grad_input_.first_rows(s.batch);
    const Tensor target = grad_input_wide_.defined() ? grad_input_wide_.first_rows(s.batch) : dx;
    backend.conv2d_backward_data(s, g, weight_.backend_data(), weight_.backend_dtype(), target.data(),
                                 target.dtype());
    if (grad_input_wide_.defined()) backend.convert(target, dx);
  }
  backend.conv2d_backward_weights(s, saved_input_.data(), g, weight_.backend_dtype(), weight_.grad.data_as<float>(),
                                      bias_.grad.data_as<float>());
  return dx;
}

}  // namespace mpx::nn
