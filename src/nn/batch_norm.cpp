// BatchNorm2d on NHWC: per-channel statistics over N*H*W rows, accumulated in double; FP32 arithmetic on
// FP32 or BF16 storage (output and gradients keep the input's dtype).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "init.h"
#include "storage.h"
#include "../common/vector_clones.h"
#include "mpx/core/error.h"
#include "mpx/nn/layers.h"

namespace mpx::nn {

namespace {
using detail::load;
using detail::store;
// Two per-channel sums over all rows: FP32 partial sums over blocks of 64 rows (vectorised across
// channels), added into per-thread double sums, then the threads' sums added in thread order
// (deterministic for a given thread count). `block_sums(first, last, a, b)` sets a[c], b[c] to the two
// FP32 sums over rows [first, last).
template <class BlockSums>
void per_channel_sums_impl(std::int64_t rows, std::int64_t channels, BlockSums block_sums, std::vector<double>& a,
                           std::vector<double>& b) {
  constexpr std::int64_t kBlockRows = 64;
  const int threads = rows > 4096 ? omp_get_max_threads() : 1;
  const auto c_count = static_cast<std::size_t>(channels);
  std::vector<double> part_a(c_count * static_cast<std::size_t>(threads), 0.0), part_b(part_a.size(), 0.0);
#pragma omp parallel num_threads(threads)
  {
    const auto t = static_cast<std::size_t>(omp_get_thread_num());
    std::vector<float> block_a(c_count), block_b(c_count);
#pragma omp for schedule(static)
    for (std::int64_t first = 0; first < rows; first += kBlockRows) {
      block_sums(first, std::min(rows, first + kBlockRows), block_a.data(), block_b.data());
      for (std::size_t c = 0; c < c_count; ++c) {
        part_a[t * c_count + c] += block_a[c];
        part_b[t * c_count + c] += block_b[c];
      }
    }
  }
  for (std::size_t t = 0; t < static_cast<std::size_t>(threads); ++t) {
    for (std::size_t c = 0; c < c_count; ++c) {
      a[c] += part_a[t * c_count + c];
      b[c] += part_b[t * c_count + c];
    }
  }
}
template <class T>
MPX_VECTOR_CLONES void moment_sums(const T* in, const float* shift, std::int64_t channels, std::int64_t first, std::int64_t last,
                 float* a, float* b) {
  for (std::int64_t c = 0; c < channels; ++c) a[c] = b[c] = 0.0f;
  for (std::int64_t r = first; r < last; ++r) {
    for (std::int64_t c = 0; c < channels; ++c) {
      const float v = load(in[r * channels + c]) - shift[c];
      a[c] += v;
      b[c] += v * v;
    }
  }
}

// Sums of g and g * (x - mean) (x-hat before the inv_std factor), g masked by the fused ReLU.
template <class T>
MPX_VECTOR_CLONES void gradient_sums(const T* dy, const T* y, const T* x, const float* mean, std::int64_t channels,
                   std::int64_t first, std::int64_t last, bool relu, float* a, float* b) {
  for (std::int64_t c = 0; c < channels; ++c) a[c] = b[c] = 0.0f;
  for (std::int64_t r = first; r < last; ++r) {
    for (std::int64_t c = 0; c < channels; ++c) {
      const std::int64_t i = r * channels + c;
      const float yi = load(y[i]), di = load(dy[i]);
      const float g = (relu & !(yi > 0.0f)) ? 0.0f : di;
      a[c] += g;
      b[c] += g * (load(x[i]) - mean[c]);
    }
  }
}

// y = x * scale + shift per channel, optionally max(0, .), over rows [begin, end).
template <class T>
MPX_VECTOR_CLONES void scale_shift_rows(const T* in, T* out, const float* scale, const float* shift, std::int64_t channels,
                      std::int64_t begin, std::int64_t end, bool relu) {
  for (std::int64_t r = begin; r < end; ++r) {
    for (std::int64_t c = 0; c < channels; ++c) {
      const std::int64_t i = r * channels + c;
      const float v = load(in[i]) * scale[c] + shift[c];
      store(out + i, relu && v <= 0.0f ? 0.0f : v);  // a NaN propagates through the ReLU
    }
  }
}

// dx = scale * (g - mean_g - x_hat * mean_g_xhat) over rows [begin, end), g masked by the fused ReLU.
template <class T>
MPX_VECTOR_CLONES void input_gradient_rows(const T* dy, const T* y, const T* x, const float* mean, const float* inv_std,
                         const float* scale, const float* mean_dy, const float* mean_dy_xhat, T* out,
                         std::int64_t channels, std::int64_t begin, std::int64_t end, bool relu) {
  for (std::int64_t r = begin; r < end; ++r) {
    for (std::int64_t c = 0; c < channels; ++c) {
      const std::int64_t i = r * channels + c;
      const float yi = load(y[i]), di = load(dy[i]);
      const float g = (relu & !(yi > 0.0f)) ? 0.0f : di;
      const float xhat = (load(x[i]) - mean[c]) * inv_std[c];
      store(out + i, scale[c] * (g - mean_dy[c] - xhat * mean_dy_xhat[c]));
    }
  }
}
}  // namespace

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
  // Normalisation parameters and statistics are FP32 whatever the policy.
  detail::init_parameter(gamma_, {channels_}, ctx, DType::f32, 0.0f, 0, true, /*fill_one=*/true);
  detail::init_parameter(beta_, {channels_}, ctx, DType::f32, 0.0f, 0, true);
  if (!running_mean_.defined()) {
    running_mean_ = Tensor::zeros({channels_}, DType::f32, MemoryCategory::weights, &ctx.memory);
    running_var_ = Tensor::empty({channels_}, DType::f32, MemoryCategory::weights, &ctx.memory);
    for (std::int64_t c = 0; c < channels_; ++c) running_var_.data_as<float>()[c] = 1.0f;
  }
  mean_ = Tensor::empty({channels_}, DType::f32, MemoryCategory::activations, &ctx.memory);
  inv_std_ = Tensor::empty({channels_}, DType::f32, MemoryCategory::activations, &ctx.memory);
  output_ = Tensor::empty(input, in.dtype, MemoryCategory::activations, &ctx.memory);
  grad_input_ = Tensor::empty(input, in.dtype, MemoryCategory::activations, &ctx.memory);
  return in;
}

Tensor BatchNorm2d::forward(const Tensor& x, Context&, bool training) {
  detail::require_dtype(x, output_.dtype(), name(), "input");
  detail::with_storage(x.dtype(), [&](auto tag) { forward_impl<decltype(tag)>(x, training); });
  return output_.first_rows(x.dim(0));
}

template <class T>
void BatchNorm2d::forward_impl(const Tensor& x, bool training) {
  const std::int64_t rows = x.numel() / channels_;
  const auto count = static_cast<double>(rows);
  const std::size_t c_count = static_cast<std::size_t>(channels_);
  const T* in = detail::elements<T>(x);
  float* mean = mean_.data_as<float>();
  float* inv_std = inv_std_.data_as<float>();
  if (training) {
    std::vector<double> sum(c_count, 0.0), sum_sq(c_count, 0.0);
    // Shifted by the first row's values so that FP32 partial sums of squares do not cancel.
    std::vector<float> shift(c_count);
    for (std::int64_t c = 0; c < channels_; ++c) shift[static_cast<std::size_t>(c)] = detail::load(in[c]);
    per_channel_sums_impl(rows, channels_, [&](std::int64_t first, std::int64_t last, float* a, float* b) {
      moment_sums(in, shift.data(), channels_, first, last, a, b);
    }, sum, sum_sq);
    for (std::int64_t c = 0; c < channels_; ++c) {  // back to moments of x
      const double k = shift[static_cast<std::size_t>(c)];
      sum_sq[c] += 2 * k * sum[c] + count * k * k;
      sum[c] += count * k;
    }
    float* running_mean = running_mean_.data_as<float>();
    float* running_var = running_var_.data_as<float>();
    for (std::int64_t c = 0; c < channels_; ++c) {
      const double m = sum[c] / count;
      const double var = std::max(0.0, sum_sq[c] / count - m * m);  // biased: used to normalise
      mean[c] = static_cast<float>(m);
      inv_std[c] = static_cast<float>(1.0 / std::sqrt(var + eps_));
      const double unbiased = rows > 1 ? var * count / (count - 1) : var;  // what PyTorch keeps as running_var
      running_mean[c] = static_cast<float>((1 - momentum_) * running_mean[c] + momentum_ * m);
      running_var[c] = static_cast<float>((1 - momentum_) * running_var[c] + momentum_ * unbiased);
    }
  } else {
    for (std::int64_t c = 0; c < channels_; ++c) {
      mean[c] = running_mean_.data_as<float>()[c];
      inv_std[c] = 1.0f / std::sqrt(running_var_.data_as<float>()[c] + eps_);
    }
  }
  const float* gamma = gamma_.value.data_as<float>();
  const float* beta = beta_.value.data_as<float>();
  input_ = x;
  T* out = detail::mutable_elements<T>(output_);
  // y = x * scale + shift, with scale = gamma * inv_std and shift = beta - mean * scale.
  std::vector<float> scale(c_count), shift(c_count);
  for (std::int64_t c = 0; c < channels_; ++c) {
    scale[c] = gamma[c] * inv_std[c];
    shift[c] = beta[c] - mean[c] * scale[c];
  }
  mpx::detail::parallel_ranges(rows, 4096, [&](std::int64_t begin, std::int64_t end) {
    scale_shift_rows(in, out, scale.data(), shift.data(), channels_, begin, end, fused_relu_);
  });
}

Tensor BatchNorm2d::backward(const Tensor& dy, Context&) {
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  detail::with_storage(dy.dtype(), [&](auto tag) { backward_impl<decltype(tag)>(dy); });
  return grad_input_.first_rows(dy.dim(0));
}

template <class T>
void BatchNorm2d::backward_impl(const Tensor& dy) {
  const std::int64_t rows = dy.numel() / channels_;
  const auto count = static_cast<double>(rows);
  const std::size_t c_count = static_cast<std::size_t>(channels_);
  const T* dy_data = detail::elements<T>(dy);
  const T* x = detail::elements<T>(input_);
  const T* y = detail::elements<T>(output_);
  const float* mean = mean_.data_as<float>();
  // With the fused ReLU the incoming gradient passes only where the output was positive (both loads are
  // unconditional and the test a bitwise and, so that the loops stay branch-free and vectorise).
  std::vector<double> sum_dy(c_count, 0.0), sum_dy_xhat(c_count, 0.0);
  per_channel_sums_impl(rows, channels_, [&](std::int64_t first, std::int64_t last, float* a, float* b) {
    gradient_sums(dy_data, y, x, mean, channels_, first, last, fused_relu_, a, b);  // x-hat: times inv_std below
  }, sum_dy, sum_dy_xhat);
  for (std::int64_t c = 0; c < channels_; ++c) sum_dy_xhat[c] *= inv_std_.data_as<float>()[c];
  const float* gamma = gamma_.value.data_as<float>();
  const float* inv_std = inv_std_.data_as<float>();
  std::vector<float> mean_dy(c_count), mean_dy_xhat(c_count), scale(c_count);
  for (std::int64_t c = 0; c < channels_; ++c) {
    gamma_.grad.data_as<float>()[c] = static_cast<float>(sum_dy_xhat[c]);
    beta_.grad.data_as<float>()[c] = static_cast<float>(sum_dy[c]);
    mean_dy[c] = static_cast<float>(sum_dy[c] / count);
    mean_dy_xhat[c] = static_cast<float>(sum_dy_xhat[c] / count);
    scale[c] = gamma[c] * inv_std[c];
  }
  T* out = detail::mutable_elements<T>(grad_input_);
  mpx::detail::parallel_ranges(rows, 4096, [&](std::int64_t begin, std::int64_t end) {
    input_gradient_rows(dy_data, y, x, mean, inv_std, scale.data(), mean_dy.data(), mean_dy_xhat.data(), out,
                        channels_, begin, end, fused_relu_);
  });
}

}  // namespace mpx::nn
