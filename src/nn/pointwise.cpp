// ReLU, Dropout, Flatten and MaxPool2d: FP32, vectorisable loops, OpenMP over rows.
#include <cstring>
#include <limits>
#include <string>

#include "mpx/core/error.h"
#include "mpx/nn/layers.h"
#include "mpx/numeric/philox.h"

namespace mpx::nn {

Shape ReLU::plan(const Shape& input, Context& ctx) {
  output_ = Tensor::empty(input, DType::f32, MemoryCategory::activations, &ctx.memory);
  grad_input_ = Tensor::empty(input, DType::f32, MemoryCategory::activations, &ctx.memory);
  return input;
}

Tensor ReLU::forward(const Tensor& x, Context&, bool) {
  Tensor y = output_.first_rows(x.dim(0));
  const float* in = x.data_as<float>();
  float* out = y.data_as<float>();
  const std::int64_t n = x.numel();
#pragma omp parallel for simd if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) out[i] = in[i] > 0.0f ? in[i] : 0.0f;
  return y;
}

Tensor ReLU::backward(const Tensor& dy, Context&) {
  Tensor dx = grad_input_.first_rows(dy.dim(0));
  const float* g = dy.data_as<float>();
  const float* y = output_.data_as<float>();
  float* out = dx.data_as<float>();
  const std::int64_t n = dy.numel();
#pragma omp parallel for simd if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) out[i] = y[i] > 0.0f ? g[i] : 0.0f;
  return dx;
}

Dropout::Dropout(std::string name, float probability, std::uint64_t stream)
    : Layer(std::move(name)), probability_(probability), stream_(stream) {
  if (!(probability >= 0.0f && probability < 1.0f)) {
    throw InvalidArgument("dropout probability must be in [0, 1), got " + std::to_string(probability));
  }
}

Shape Dropout::plan(const Shape& input, Context& ctx) {
  mask_ = Tensor::empty(input, DType::f32, MemoryCategory::activations, &ctx.memory);
  output_ = Tensor::empty(input, DType::f32, MemoryCategory::activations, &ctx.memory);
  grad_input_ = Tensor::empty(input, DType::f32, MemoryCategory::activations, &ctx.memory);
  return input;
}

Tensor Dropout::forward(const Tensor& x, Context& ctx, bool training) {
  last_training_ = training && probability_ > 0.0f;
  if (!last_training_) return x;
  Tensor y = output_.first_rows(x.dim(0));
  const float* in = x.data_as<float>();
  float* out = y.data_as<float>();
  float* mask = mask_.data_as<float>();
  const float keep_scale = 1.0f / (1.0f - probability_);
  const auto threshold = static_cast<std::uint32_t>(static_cast<double>(probability_) * 4294967296.0);
  // Counter-based: the mask depends on (seed, layer stream, step, element) only, never on threads.
  const std::uint64_t key = ctx.seed ^ (stream_ * 0x9E3779B97F4A7C15ull);
  const std::uint64_t base = ctx.step * static_cast<std::uint64_t>(mask_.numel());
  const std::int64_t n = x.numel();
#pragma omp parallel for if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) {
    const bool keep = numeric::random_u32(key, base + static_cast<std::uint64_t>(i)) >= threshold;
    mask[i] = keep ? keep_scale : 0.0f;
    out[i] = in[i] * mask[i];
  }
  return y;
}

Tensor Dropout::backward(const Tensor& dy, Context&) {
  if (!last_training_) return dy;
  Tensor dx = grad_input_.first_rows(dy.dim(0));
  const float* g = dy.data_as<float>();
  const float* mask = mask_.data_as<float>();
  float* out = dx.data_as<float>();
  const std::int64_t n = dy.numel();
#pragma omp parallel for simd if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) out[i] = g[i] * mask[i];
  return dx;
}

Shape Flatten::plan(const Shape& input, Context&) {
  input_shape_ = input;
  return {input[0], numel(input) / std::max<std::int64_t>(1, input[0])};
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

Shape MaxPool2d::plan(const Shape& input, Context& ctx) {
  if (input.size() != 4 || input[1] < kernel_ || input[2] < kernel_) {
    throw InvalidArgument("layer " + name() + " (max_pool2d " + std::to_string(kernel_) + ") got input of shape " +
                          to_string(input) + "; expected NHWC with H, W >= " + std::to_string(kernel_));
  }
  input_shape_ = input;
  const Shape out = {input[0], input[1] / kernel_, input[2] / kernel_, input[3]};
  output_ = Tensor::empty(out, DType::f32, MemoryCategory::activations, &ctx.memory);
  argmax_ = Tensor::empty(out, DType::i32, MemoryCategory::activations, &ctx.memory);
  grad_input_ = Tensor::empty(input, DType::f32, MemoryCategory::activations, &ctx.memory);
  return out;
}

Tensor MaxPool2d::forward(const Tensor& x, Context&, bool) {
  const std::int64_t n = x.dim(0), h = x.dim(1), w = x.dim(2), c = x.dim(3);
  const std::int64_t oh = h / kernel_, ow = w / kernel_;
  Tensor y = output_.first_rows(n);
  const float* in = x.data_as<float>();
  float* out = y.data_as<float>();
  std::int32_t* arg = argmax_.data_as<std::int32_t>();
#pragma omp parallel for collapse(2) if (n * oh > 64)
  for (std::int64_t b = 0; b < n; ++b) {
    for (std::int64_t i = 0; i < oh; ++i) {
      for (std::int64_t j = 0; j < ow; ++j) {
        float* o = out + ((b * oh + i) * ow + j) * c;
        std::int32_t* a = arg + ((b * oh + i) * ow + j) * c;
        for (std::int64_t ch = 0; ch < c; ++ch) {
          o[ch] = -std::numeric_limits<float>::infinity();
          a[ch] = 0;
        }
        for (std::int64_t r = 0; r < kernel_; ++r) {
          for (std::int64_t s = 0; s < kernel_; ++s) {
            const std::int64_t index = ((b * h + i * kernel_ + r) * w + j * kernel_ + s) * c;
            for (std::int64_t ch = 0; ch < c; ++ch) {
              // `!(<=)` so that a NaN wins and propagates, as in PyTorch.
              if (!(in[index + ch] <= o[ch])) {
                o[ch] = in[index + ch];
                a[ch] = static_cast<std::int32_t>(index + ch);
              }
            }
          }
        }
      }
    }
  }
  return y;
}

Tensor MaxPool2d::backward(const Tensor& dy, Context&) {
  Shape shape = input_shape_;
  shape[0] = dy.dim(0);
  Tensor dx = grad_input_.first_rows(dy.dim(0));
  dx.fill_zero();
  const float* g = dy.data_as<float>();
  const std::int32_t* arg = argmax_.data_as<std::int32_t>();
  float* out = dx.data_as<float>();
  const std::int64_t n = dy.numel();
  // Windows do not overlap (stride = kernel), so each input element receives at most one gradient.
  for (std::int64_t i = 0; i < n; ++i) out[arg[i]] += g[i];
  return dx;
}

}  // namespace mpx::nn
