// The layers the GPT-2 model will need beyond the CNN's: GELU, LayerNorm (FP32 statistics), Embedding.
// FP32 arithmetic on FP32 or BF16 storage (outputs and gradients keep the input's dtype).
#include <cmath>
#include <numbers>
#include <random>
#include <string>

#include "init.h"
#include "storage.h"
#include "mpx/core/error.h"
#include "mpx/nn/layers.h"

namespace mpx::nn {

namespace {
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
}  // namespace

GELU::GELU(std::string name, bool tanh_approximation) : Layer(std::move(name)), tanh_(tanh_approximation) {}

TensorSpec GELU::plan(const TensorSpec& in, Context& ctx) {
  output_ = Tensor::empty(in.shape, in.dtype, MemoryCategory::activations, &ctx.memory);
  grad_input_ = Tensor::empty(in.shape, in.dtype, MemoryCategory::activations, &ctx.memory);
  return in;
}

Tensor GELU::forward(const Tensor& x, Context&, bool) {
  detail::require_dtype(x, output_.dtype(), name(), "input");
  input_ = x;
  Tensor y = output_.first_rows(x.dim(0));
  detail::with_storage(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = detail::elements<T>(x);
    T* out = detail::mutable_elements<T>(y);
    const std::int64_t n = x.numel();
#pragma omp parallel for if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) {
      const double v = detail::load(in[i]);
      const double cdf = tanh_ ? 0.5 * (1.0 + std::tanh(kSqrt2OverPi * (v + 0.044715 * v * v * v)))
                               : 0.5 * (1.0 + std::erf(v * kInvSqrt2));
      detail::store(out + i, static_cast<float>(v * cdf));
    }
  });
  return y;
}

Tensor GELU::backward(const Tensor& dy, Context&) {
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  Tensor dx = grad_input_.first_rows(dy.dim(0));
  detail::with_storage(dy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* g = detail::elements<T>(dy);
    const T* in = detail::elements<T>(input_);
    T* out = detail::mutable_elements<T>(dx);
    const std::int64_t n = dy.numel();
#pragma omp parallel for if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) {
      const double v = detail::load(in[i]);
    double derivative;
    if (tanh_) {
      const double inner = kSqrt2OverPi * (v + 0.044715 * v * v * v);
      const double t = std::tanh(inner);
      derivative = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * kSqrt2OverPi * (1.0 + 3.0 * 0.044715 * v * v);
    } else {
      derivative = 0.5 * (1.0 + std::erf(v * kInvSqrt2)) + v * kInvSqrt2Pi * std::exp(-0.5 * v * v);
    }
    detail::store(out + i, static_cast<float>(detail::load(g[i]) * derivative));
  }
  });
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
  detail::init_parameter(gamma_, {features_}, ctx, DType::f32, 0.0f, 0, false, /*fill_one=*/true);
  detail::init_parameter(beta_, {features_}, ctx, DType::f32, 0.0f, 0, false);
  const std::int64_t rows = numel(input) / features_;
  normalized_ = Tensor::empty(input, DType::f32, MemoryCategory::activations, &ctx.memory);
  inv_std_ = Tensor::empty({rows}, DType::f32, MemoryCategory::activations, &ctx.memory);
  output_ = Tensor::empty(input, in.dtype, MemoryCategory::activations, &ctx.memory);
  grad_input_ = Tensor::empty(input, in.dtype, MemoryCategory::activations, &ctx.memory);
  return in;
}

Tensor LayerNorm::forward(const Tensor& x, Context&, bool) {
  detail::require_dtype(x, output_.dtype(), name(), "input");
  detail::with_storage(x.dtype(), [&](auto tag) { forward_impl<decltype(tag)>(x); });
  return output_.first_rows(x.dim(0));
}

template <class T>
void LayerNorm::forward_impl(const Tensor& x) {
  const std::int64_t rows = x.numel() / features_;
  const T* in = detail::elements<T>(x);
  const float* gamma = gamma_.value.data_as<float>();
  const float* beta = beta_.value.data_as<float>();
  T* out = detail::mutable_elements<T>(output_);
  float* xhat = normalized_.data_as<float>();
  float* inv_std = inv_std_.data_as<float>();
#pragma omp parallel for if (rows > 64)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* row = in + r * features_;
    double sum = 0, sum_sq = 0;
    for (std::int64_t c = 0; c < features_; ++c) {
      const double v = detail::load(row[c]);
      sum += v;
      sum_sq += v * v;
    }
    const double mean = sum / static_cast<double>(features_);
    const double var = std::max(0.0, sum_sq / static_cast<double>(features_) - mean * mean);
    const auto istd = static_cast<float>(1.0 / std::sqrt(var + eps_));
    inv_std[r] = istd;
    for (std::int64_t c = 0; c < features_; ++c) {
      const std::int64_t i = r * features_ + c;
      xhat[i] = (detail::load(row[c]) - static_cast<float>(mean)) * istd;
      detail::store(out + i, xhat[i] * gamma[c] + beta[c]);
    }
  }
}

Tensor LayerNorm::backward(const Tensor& dy, Context&) {
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  detail::with_storage(dy.dtype(), [&](auto tag) { backward_impl<decltype(tag)>(dy); });
  return grad_input_.first_rows(dy.dim(0));
}

template <class T>
void LayerNorm::backward_impl(const Tensor& dy) {
  const std::int64_t rows = dy.numel() / features_;
  const T* g = detail::elements<T>(dy);
  const float* xhat = normalized_.data_as<float>();
  const float* inv_std = inv_std_.data_as<float>();
  const float* gamma = gamma_.value.data_as<float>();
  float* dgamma = gamma_.grad.data_as<float>();
  float* dbeta = beta_.grad.data_as<float>();
  for (std::int64_t c = 0; c < features_; ++c) dgamma[c] = dbeta[c] = 0.0f;
  T* out = detail::mutable_elements<T>(grad_input_);
  for (std::int64_t r = 0; r < rows; ++r) {
    double mean_g = 0, mean_g_xhat = 0;
    for (std::int64_t c = 0; c < features_; ++c) {
      const std::int64_t i = r * features_ + c;
      const float gi = detail::load(g[i]);
      const double gx = static_cast<double>(gi) * gamma[c];
      mean_g += gx;
      mean_g_xhat += gx * xhat[i];
      dgamma[c] += gi * xhat[i];
      dbeta[c] += gi;
    }
    mean_g /= static_cast<double>(features_);
    mean_g_xhat /= static_cast<double>(features_);
    for (std::int64_t c = 0; c < features_; ++c) {
      const std::int64_t i = r * features_ + c;
      const double gi = detail::load(g[i]);
      detail::store(out + i, static_cast<float>(inv_std[r] * (gi * gamma[c] - mean_g - xhat[i] * mean_g_xhat)));
    }
  }
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
  // GPT-2 initialises embeddings N(0, 0.02); a uniform of the same standard deviation keeps init simple.
  detail::init_parameter(table_, {vocabulary_, dim_}, ctx, DType::f32, 0.02f * std::sqrt(3.0f), seed_, false);
  Shape out = input;
  out.push_back(dim_);
  output_ = Tensor::empty(out, activation_storage(ctx.policy), MemoryCategory::activations, &ctx.memory);
  return {out, output_.dtype()};
}

Tensor Embedding::forward(const Tensor& ids, Context&, bool) {
  ids_ = ids;
  const std::int32_t* id = ids.data_as<std::int32_t>();
  Shape shape = ids.shape();
  shape.push_back(dim_);
  Tensor y = output_.first_rows(ids.dim(0)).reshaped(shape);
  const float* table = table_.value.data_as<float>();
  for (std::int64_t t = 0; t < ids.numel(); ++t) {
    if (id[t] < 0 || id[t] >= vocabulary_) {
      throw InvalidArgument("layer " + name() + ": token id " + std::to_string(id[t]) + " at position " +
                            std::to_string(t) + " is outside the vocabulary of " + std::to_string(vocabulary_));
    }
  }
  detail::with_storage(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* out = detail::mutable_elements<T>(y);
    for (std::int64_t t = 0; t < ids.numel(); ++t) {
      for (std::int64_t c = 0; c < dim_; ++c) detail::store(out + t * dim_ + c, table[id[t] * dim_ + c]);
    }
  });
  return y;
}

Tensor Embedding::backward(const Tensor& dy, Context&) {
  table_.grad.fill_zero();
  const std::int32_t* id = ids_.data_as<std::int32_t>();
  float* grad = table_.grad.data_as<float>();
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  detail::with_storage(dy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* g = detail::elements<T>(dy);
    for (std::int64_t t = 0; t < ids_.numel(); ++t) {
      for (std::int64_t c = 0; c < dim_; ++c) grad[id[t] * dim_ + c] += detail::load(g[t * dim_ + c]);
    }
  });
  return Tensor();
}

}  // namespace mpx::nn
