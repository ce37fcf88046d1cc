// ReLU, Dropout, Flatten and MaxPool2d: dtype-preserving (the backend's storage, FP32 arithmetic).
#include <algorithm>
#include <string>

#include "init.h"
#include "mpx/core/error.h"
#include "mpx/nn/layers.h"

namespace mpx::nn {

namespace {
// An output and an input-gradient buffer of the input's shape and dtype (the pointwise layers' plan).
void plan_like_input(const TensorSpec& in, Context& ctx, Tensor& output, Tensor& grad_input) {
  output = ctx.allocate(in.shape, in.dtype, MemoryCategory::activations);
  grad_input = ctx.allocate(in.shape, in.dtype, MemoryCategory::activations);
}
}  // namespace

TensorSpec ReLU::plan(const TensorSpec& in, Context& ctx) {
  ctx.backend().require(backend::Op::relu, in.dtype, name());
  plan_like_input(in, ctx, output_, grad_input_);
  return in;
}

Tensor ReLU::forward(const Tensor& x, Context& ctx, bool) {
  detail::require_dtype(x, output_.dtype(), name(), "input");
  Tensor y = output_.first_rows(x.dim(0));
  ctx.backend().relu_forward(x, y);
  return y;
}

Tensor ReLU::backward(const Tensor& dy, Context& ctx) {
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  Tensor dx = grad_input_.first_rows(dy.dim(0));
  ctx.backend().relu_backward(output_.first_rows(dy.dim(0)), dy, dx);
  return dx;
}

Dropout::Dropout(std::string name, float probability, std::uint64_t stream)
    : Layer(std::move(name)), probability_(probability), stream_(stream) {
  if (!(probability >= 0.0f && probability < 1.0f)) {
    throw InvalidArgument("dropout probability must be in [0, 1), got " + std::to_string(probability));
  }
}

TensorSpec Dropout::plan(const TensorSpec& in, Context& ctx) {
  ctx.backend().require(backend::Op::dropout, in.dtype, name());
  keep_ = ctx.allocate(in.shape, DType::u8, MemoryCategory::activations);
  plan_like_input(in, ctx, output_, grad_input_);
  return in;
}

// The mask of element i at step s comes from Philox keyed by (seed, layer) at counter s * planned + i.
Tensor Dropout::forward(const Tensor& x, Context& ctx, bool training) {
  detail::require_dtype(x, output_.dtype(), name(), "input");
  last_training_ = training && probability_ > 0.0f;
  if (!last_training_) return x;
  Tensor y = output_.first_rows(x.dim(0));
  // Data parallel: the masks of the rows one process with the global batch would draw for these rows.
  const auto per_row = static_cast<std::uint64_t>(keep_.numel() / std::max<std::int64_t>(1, keep_.dim(0)));
  const backend::DropoutArgs args{probability_, key(ctx.seed), static_cast<std::uint64_t>(keep_.numel()) * ctx.replicas,
                                  ctx.step, ctx.first_row * per_row};
  ctx.backend().dropout_forward(x, args, keep_.first_rows(x.dim(0)), y);
  return y;
}

Tensor Dropout::backward(const Tensor& dy, Context& ctx) {
  if (!last_training_) return dy;
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  Tensor dx = grad_input_.first_rows(dy.dim(0));
  ctx.backend().dropout_backward(dy, keep_.first_rows(dy.dim(0)), probability_, dx);
  return dx;
}

TensorSpec Flatten::plan(const TensorSpec& in, Context&) {
  input_shape_ = in.shape;
  return {{in.shape[0], numel(in.shape) / std::max<std::int64_t>(1, in.shape[0])}, in.dtype};
}

Tensor Flatten::forward(const Tensor& x, Context&, bool) { return x.reshaped({x.dim(0), x.numel() / x.dim(0)}); }

Tensor Flatten::backward(const Tensor& dy, Context&) {
  Shape shape = input_shape_;
  shape[0] = dy.dim(0);
  return dy.reshaped(shape);
}

MaxPool2d::MaxPool2d(std::string name, std::int64_t kernel) : Layer(std::move(name)), kernel_(kernel) {
  if (kernel < 1) throw InvalidArgument("max-pool kernel must be positive");
}

TensorSpec MaxPool2d::plan(const TensorSpec& in, Context& ctx) {
  const Shape& input = in.shape;
  if (input.size() != 4 || input[1] < kernel_ || input[2] < kernel_) {
    throw InvalidArgument("layer " + name() + " (max_pool2d " + std::to_string(kernel_) + ") got input of shape " +
                          to_string(input) + "; expected NHWC with H, W >= " + std::to_string(kernel_));
  }
  ctx.backend().require(backend::Op::max_pool, in.dtype, name());
  const Shape out = {input[0], input[1] / kernel_, input[2] / kernel_, input[3]};
  output_ = ctx.allocate(out, in.dtype, MemoryCategory::activations);
  grad_input_ = ctx.allocate(input, in.dtype, MemoryCategory::activations);
  return {out, in.dtype};
}

// Forward keeps only the maxima; backward finds each window's (first) maximum again from the input,
// which is still alive in the previous layer's buffer.
Tensor MaxPool2d::forward(const Tensor& x, Context& ctx, bool) {
  detail::require_dtype(x, output_.dtype(), name(), "input");
  input_ = x;
  Tensor y = output_.first_rows(x.dim(0));
  ctx.backend().max_pool_forward(x, kernel_, y);
  return y;
}

Tensor MaxPool2d::backward(const Tensor& dy, Context& ctx) {
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  Tensor dx = grad_input_.first_rows(dy.dim(0));
  ctx.backend().max_pool_backward(input_, output_.first_rows(dy.dim(0)), dy, kernel_, dx);
  return dx;
}

}  // namespace mpx::nn
