// ReLU, Dropout, Flatten and MaxPool2d: FP32, vectorisable loops, OpenMP over rows.
#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "mpx/core/error.h"
#include "mpx/nn/layers.h"
#include "mpx/numeric/philox.h"
#include "../common/vector_clones.h"

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
  grad_input_ = Tensor::empty(input, DType::f32, MemoryCategory::activations, &ctx.memory);
  return out;
}

namespace {

// Max over each k x k window for images [first, last) of an NHWC batch.
MPX_VECTOR_CLONES
void max_pool_images(const float* in, float* out, std::int64_t first, std::int64_t last, std::int64_t h, std::int64_t w,
                     std::int64_t c, std::int64_t kernel) {
  const std::int64_t oh = h / kernel, ow = w / kernel;
  for (std::int64_t b = first; b < last; ++b) {
    for (std::int64_t i = 0; i < oh; ++i) {
      for (std::int64_t j = 0; j < ow; ++j) {
        float* o = out + ((b * oh + i) * ow + j) * c;
        const float* v0 = in + ((b * h + i * kernel) * w + j * kernel) * c;
        for (std::int64_t ch = 0; ch < c; ++ch) o[ch] = v0[ch];
        for (std::int64_t k = 1; k < kernel * kernel; ++k) {
          const float* v = in + ((b * h + i * kernel + k / kernel) * w + j * kernel + k % kernel) * c;
          for (std::int64_t ch = 0; ch < c; ++ch) {
            // A NaN wins and propagates, as in PyTorch; on ties the first position keeps it.
            const bool take = (v[ch] > o[ch]) | ((v[ch] != v[ch]) & (o[ch] == o[ch]));
            o[ch] = take ? v[ch] : o[ch];
          }
        }
      }
    }
  }
}

// The gradient of 2x2 pooling for images [first, last): position k of a window takes it when it holds the
// maximum (a NaN maximum matches a NaN) and no earlier position did. Branch-free, so it vectorises.
MPX_VECTOR_CLONES
void max_pool2_gradient_images(const float* in, const float* max, const float* g, float* out, std::int64_t first,
                               std::int64_t last, std::int64_t h, std::int64_t w, std::int64_t c) {
  const std::int64_t oh = h / 2, ow = w / 2;
  for (std::int64_t b = first; b < last; ++b) {
    for (std::int64_t i = 0; i < oh; ++i) {
      for (std::int64_t j = 0; j < ow; ++j) {
        const std::int64_t o = ((b * oh + i) * ow + j) * c;
        const std::int64_t top = ((b * h + 2 * i) * w + 2 * j) * c, bottom = top + w * c;
        const float *v0 = in + top, *v1 = in + top + c, *v2 = in + bottom, *v3 = in + bottom + c;
        float *d0 = out + top, *d1 = out + top + c, *d2 = out + bottom, *d3 = out + bottom + c;
        for (std::int64_t ch = 0; ch < c; ++ch) {
          const float m = max[o + ch], grad = g[o + ch];
          const bool nan_max = m != m;
          const bool e0 = (v0[ch] == m) | (nan_max & (v0[ch] != v0[ch]));
          const bool e1 = (v1[ch] == m) | (nan_max & (v1[ch] != v1[ch]));
          const bool e2 = (v2[ch] == m) | (nan_max & (v2[ch] != v2[ch]));
          const bool e3 = (v3[ch] == m) | (nan_max & (v3[ch] != v3[ch]));
          d0[ch] = e0 ? grad : 0.0f;
          d1[ch] = (e1 & !e0) ? grad : 0.0f;
          d2[ch] = (e2 & !(e0 | e1)) ? grad : 0.0f;
          d3[ch] = (e3 & !(e0 | e1 | e2)) ? grad : 0.0f;
        }
      }
    }
  }
}

}  // namespace

// Forward keeps only the maxima; backward finds each window's (first) maximum again by comparing the
// input, which is still alive in the previous layer's buffer.
Tensor MaxPool2d::forward(const Tensor& x, Context&, bool) {
  const std::int64_t n = x.dim(0), h = x.dim(1), w = x.dim(2), c = x.dim(3);
  input_ = x;
  Tensor y = output_.first_rows(n);
  const float* in = x.data_as<float>();
  float* out = y.data_as<float>();
  mpx::detail::parallel_ranges(n, 2, [&](std::int64_t first, std::int64_t last) {
    max_pool_images(in, out, first, last, h, w, c, kernel_);
  });
  return y;
}

Tensor MaxPool2d::backward(const Tensor& dy, Context&) {
  const std::int64_t n = dy.dim(0), h = input_shape_[1], w = input_shape_[2], c = input_shape_[3];
  const std::int64_t oh = h / kernel_, ow = w / kernel_, window = kernel_ * kernel_;
  Tensor dx = grad_input_.first_rows(n);
  if (oh * kernel_ != h || ow * kernel_ != w) dx.fill_zero();  // rows/columns no window covers
  const float* g = dy.data_as<float>();
  const float* in = input_.data_as<float>();
  const float* out_max = output_.data_as<float>();
  float* out = dx.data_as<float>();
  if (kernel_ == 2) {
    mpx::detail::parallel_ranges(n, 2, [&](std::int64_t first, std::int64_t last) {
      max_pool2_gradient_images(in, out_max, g, out, first, last, h, w, c);
    });
    return dx;
  }
  // Other kernel sizes: the same rule, one window position at a time.
#pragma omp parallel for collapse(2) if (n * oh > 64)
  for (std::int64_t b = 0; b < n; ++b) {
    for (std::int64_t i = 0; i < oh; ++i) {
      for (std::int64_t j = 0; j < ow; ++j) {
        const std::int64_t o = ((b * oh + i) * ow + j) * c;
        for (std::int64_t ch = 0; ch < c; ++ch) {
          const float m = out_max[o + ch];
          bool taken = false;
          for (std::int64_t k = 0; k < window; ++k) {
            const std::int64_t index = ((b * h + i * kernel_ + k / kernel_) * w + j * kernel_ + k % kernel_) * c + ch;
            const bool is_max = !taken && (in[index] == m || (m != m && in[index] != in[index]));
            out[index] = is_max ? g[o + ch] : 0.0f;
            taken = taken || is_max;
          }
        }
      }
    }
  }
  return dx;
}

}  // namespace mpx::nn
