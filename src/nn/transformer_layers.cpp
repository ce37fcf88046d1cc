// The layers the GPT-2 model will need beyond the CNN's: GELU, LayerNorm (FP32 statistics), Embedding.
// Outputs and gradients keep the input's dtype (embedding: the activation storage).
#include <cmath>
#include <string>

#include "init.h"
#include "mpx/core/error.h"
#include "mpx/nn/layers.h"

namespace mpx::nn {

GELU::GELU(std::string name, bool tanh_approximation) : Layer(std::move(name)), tanh_(tanh_approximation) {}

TensorSpec GELU::plan(const TensorSpec& in, Context& ctx) {
  ctx.backend().require(backend::Op::gelu, in.dtype, name());
  output_ = ctx.allocate(in.shape, in.dtype, MemoryCategory::activations);
  grad_input_ = ctx.allocate(in.shape, in.dtype, MemoryCategory::activations);
  return in;
}

Tensor GELU::forward(const Tensor& x, Context& ctx, bool) {
  detail::require_dtype(x, output_.dtype(), name(), "input");
  input_ = x;
  Tensor y = output_.first_rows(x.dim(0));
  ctx.backend().gelu_forward(x, y, tanh_);
  return y;
}

Tensor GELU::backward(const Tensor& dy, Context& ctx) {
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  Tensor dx = grad_input_.first_rows(dy.dim(0));
  ctx.backend().gelu_backward(input_, dy, dx, tanh_);
  return dx;
}

LayerNorm::LayerNorm(std::string name, std::int64_t features, float eps)
    : Layer(std::move(name)), features_(features), eps_(eps) {
  gamma_.name = this->name() + ".weight";
  beta_.name = this->name() + ".bias";
}

TensorSpec LayerNorm::plan(const TensorSpec& in, Context& ctx) {
  const Shape& input = in.shape;
  if (input.empty() || input.back() != features_) {
    throw InvalidArgument("layer " + name() + " (layer_norm over " + std::to_string(features_) +
                          " features) got input of shape " + to_string(input));
  }
  ctx.backend().require(backend::Op::layer_norm, in.dtype, name());
  detail::init_parameter(gamma_, {features_}, ctx, DType::f32, 0.0f, 0, false, /*fill_one=*/true);
  detail::init_parameter(beta_, {features_}, ctx, DType::f32, 0.0f, 0, false);
  const std::int64_t rows = numel(input) / features_;
  mean_ = ctx.allocate({rows}, DType::f32, MemoryCategory::activations);
  inv_std_ = ctx.allocate({rows}, DType::f32, MemoryCategory::activations);
  output_ = ctx.allocate(input, in.dtype, MemoryCategory::activations);
  grad_input_ = ctx.allocate(input, in.dtype, MemoryCategory::activations);
  return in;
}

Tensor LayerNorm::forward(const Tensor& x, Context& ctx, bool) {
  detail::require_dtype(x, output_.dtype(), name(), "input");
  input_ = x;
  const std::int64_t rows = x.numel() / features_;
  Tensor y = output_.first_rows(x.dim(0));
  ctx.backend().layer_norm_forward(x, gamma_.value, beta_.value, eps_, mean_.first_rows(rows),
                                   inv_std_.first_rows(rows), y);
  return y;
}

Tensor LayerNorm::backward(const Tensor& dy, Context& ctx) {
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  const std::int64_t rows = dy.numel() / features_;
  Tensor dx = grad_input_.first_rows(dy.dim(0));
  ctx.backend().layer_norm_backward(input_, dy, gamma_.value, mean_.first_rows(rows), inv_std_.first_rows(rows), dx,
                                    gamma_.grad, beta_.grad);
  return dx;
}

Embedding::Embedding(std::string name, std::int64_t vocabulary, std::int64_t dim, std::uint64_t init_seed)
    : Layer(std::move(name)), vocabulary_(vocabulary), dim_(dim), seed_(init_seed) {
  table_.name = this->name() + ".weight";
}

TensorSpec Embedding::plan(const TensorSpec& in, Context& ctx) {
  const Shape& input = in.shape;
  if (in.dtype != DType::i32) {
    throw InvalidArgument("layer " + name() + " (embedding) needs i32 token ids, got " + std::string(mpx::name(in.dtype)));
  }
  if (input.empty()) throw InvalidArgument("layer " + name() + " (embedding) needs token ids, got a scalar shape");
  ctx.backend().require(backend::Op::embedding, ctx.activation_dtype(), name());
  // GPT-2 initialises embeddings N(0, 0.02); a uniform of the same standard deviation keeps init simple.
  detail::init_parameter(table_, {vocabulary_, dim_}, ctx, DType::f32, 0.02f * std::sqrt(3.0f), seed_, false);
  Shape out = input;
  out.push_back(dim_);
  output_ = ctx.allocate(out, ctx.activation_dtype(), MemoryCategory::activations);
  return {out, output_.dtype()};
}

Tensor Embedding::forward(const Tensor& ids, Context& ctx, bool) {
  ids_ = ids;
  Shape shape = ids.shape();
  shape.push_back(dim_);
  Tensor y = output_.first_rows(ids.dim(0)).reshaped(shape);
  try {
    ctx.backend().embedding_forward(ids, table_.value, y);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument("layer " + name() + ": " + e.what());
  }
  return y;
}

Tensor Embedding::backward(const Tensor& dy, Context& ctx) {
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  ctx.backend().embedding_backward(ids_, dy, table_.grad, /*accumulate=*/table_.uses > 1);
  return Tensor();
}

}  // namespace mpx::nn
