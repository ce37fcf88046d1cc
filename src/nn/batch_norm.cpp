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

// Rows are processed a group at a time as one flat loop over group * channels elements, with the
// per-channel parameters repeated `group` times: a long inner loop vectorises well where a 32-channel row
// is only two vectors and the per-row loop overhead dominates. The loops carry `#pragma GCC ivdep`: their
// outputs never overlap their inputs, and without it GCC gives up on the runtime alias checks it would
// need for this many pointers and leaves the FP32 builds scalar.
namespace {
using detail::load;
using detail::store;

struct Period {
  std::int64_t channels = 1, length = 1;  // length: channels times the rows in a group (about 256 values)
};
Period period_for(std::int64_t channels) { return {channels, channels * std::max<std::int64_t>(1, 256 / channels)}; }
std::vector<float> repeated(const float* per_channel, Period p) {
  std::vector<float> out(static_cast<std::size_t>(p.length));
  for (std::int64_t j = 0; j < p.length; ++j) out[static_cast<std::size_t>(j)] = per_channel[j % p.channels];
  return out;
}

// Two per-channel sums over all rows: FP32 partial sums over blocks of 256 rows (vectorised across a
// group of rows), added into per-thread double sums, then the threads' sums added in thread order
// (deterministic for a given thread count). `block_sums(begin, end, a, b)` sets a[j], b[j] (j < length)
// to the FP32 sums of the elements [begin, end) whose offset from begin is j modulo length.
template <class BlockSums>
void per_channel_sums_impl(std::int64_t rows, Period p, BlockSums block_sums, std::vector<double>& a,
                           std::vector<double>& b) {
  constexpr std::int64_t kBlockRows = 256;
  const int threads = rows > 4096 ? omp_get_max_threads() : 1;
  const auto c_count = static_cast<std::size_t>(p.channels);
  std::vector<double> part_a(c_count * static_cast<std::size_t>(threads), 0.0), part_b(part_a.size(), 0.0);
#pragma omp parallel num_threads(threads)
  {
    const auto t = static_cast<std::size_t>(omp_get_thread_num());
    std::vector<float> block_a(static_cast<std::size_t>(p.length)), block_b(block_a.size());
#pragma omp for schedule(static)
    for (std::int64_t first = 0; first < rows; first += kBlockRows) {
      block_sums(first * p.channels, std::min(rows, first + kBlockRows) * p.channels, block_a.data(), block_b.data());
      for (std::size_t j = 0; j < block_a.size(); ++j) {
        part_a[t * c_count + j % c_count] += block_a[j];
        part_b[t * c_count + j % c_count] += block_b[j];
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
MPX_VECTOR_CLONES void moment_sums(const T* in, const float* shift, std::int64_t length, std::int64_t begin,
                                   std::int64_t end, float* a, float* b) {
  for (std::int64_t j = 0; j < length; ++j) a[j] = b[j] = 0.0f;
  for (std::int64_t base = begin; base < end; base += length) {
    const std::int64_t n = std::min(length, end - base);
#pragma GCC ivdep
    for (std::int64_t j = 0; j < n; ++j) {
      const float v = load(in[base + j]) - shift[j];
      a[j] += v;
      b[j] += v * v;
    }
  }
}

// The normalised value before storage rounding; forward and backward both use this one function, so that
// the fused ReLU's mask can be recomputed from x in backward instead of reading the output again.
inline float normalised(float x, float scale, float shift) { return x * scale + shift; }

// The incoming gradient where the fused ReLU let the value through (v > 0; a NaN output passes nothing).
inline float relu_masked(float g, float x, float scale, float shift, bool relu) {
  return (relu & !(normalised(x, scale, shift) > 0.0f)) ? 0.0f : g;
}

// Sums of g and g * (x - mean) (x-hat before the inv_std factor), g masked by the fused ReLU.
template <class T>
MPX_VECTOR_CLONES void gradient_sums(const T* dy, const T* x, const float* mean, const float* scale,
                                     const float* shift, std::int64_t length, std::int64_t begin, std::int64_t end,
                                     bool relu, float* a, float* b) {
  for (std::int64_t j = 0; j < length; ++j) a[j] = b[j] = 0.0f;
  for (std::int64_t base = begin; base < end; base += length) {
    const std::int64_t n = std::min(length, end - base);
#pragma GCC ivdep
    for (std::int64_t j = 0; j < n; ++j) {
      const float xi = load(x[base + j]);
      const float g = relu_masked(load(dy[base + j]), xi, scale[j], shift[j], relu);
      a[j] += g;
      b[j] += g * (xi - mean[j]);
    }
  }
}

// y = x * scale + shift per channel, optionally max(0, .), over elements [begin, end).
template <class T>
MPX_VECTOR_CLONES void scale_shift_rows(const T* in, T* out, const float* scale, const float* shift,
                                        std::int64_t length, std::int64_t begin, std::int64_t end, bool relu) {
  for (std::int64_t base = begin; base < end; base += length) {
    const std::int64_t n = std::min(length, end - base);
#pragma GCC ivdep
    for (std::int64_t j = 0; j < n; ++j) {
      const float v = normalised(load(in[base + j]), scale[j], shift[j]);
      store(out + base + j, relu && v <= 0.0f ? 0.0f : v);  // a NaN propagates through the ReLU
    }
  }
}

// dx = scale * (g - mean_g - x_hat * mean_g_xhat) over elements [begin, end), g masked by the fused ReLU.
// `k` holds the per-channel factors, each repeated over the period: mean, inv_std, scale, shift, mean_g,
// mean_g_xhat.
struct GradientFactors {
  const float *mean, *inv_std, *scale, *shift, *mean_dy, *mean_dy_xhat;
};
template <class T>
MPX_VECTOR_CLONES void input_gradient_rows(const T* dy, const T* x, GradientFactors k, T* out, std::int64_t length,
                                           std::int64_t begin, std::int64_t end, bool relu) {
  for (std::int64_t base = begin; base < end; base += length) {
    const std::int64_t n = std::min(length, end - base);
#pragma GCC ivdep
    for (std::int64_t j = 0; j < n; ++j) {
      const float xi = load(x[base + j]);
      const float g = relu_masked(load(dy[base + j]), xi, k.scale[j], k.shift[j], relu);
      const float xhat = (xi - k.mean[j]) * k.inv_std[j];
      store(out + base + j, k.scale[j] * (g - k.mean_dy[j] - xhat * k.mean_dy_xhat[j]));
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

Tensor BatchNorm2d::forward(const Tensor& x, Context& ctx, bool training) {
  detail::require_dtype(x, output_.dtype(), name(), "input");
  update_running_ = ctx.update_running_statistics;
  detail::with_storage(x.dtype(), [&](auto tag) { forward_impl<decltype(tag)>(x, training); });
  return output_.first_rows(x.dim(0));
}

template <class T>
void BatchNorm2d::forward_impl(const Tensor& x, bool training) {
  const std::int64_t rows = x.numel() / channels_;
  const auto count = static_cast<double>(rows);
  const std::size_t c_count = static_cast<std::size_t>(channels_);
  const T* in = detail::elements<T>(x);
  const Period period = period_for(channels_);
  float* mean = mean_.data_as<float>();
  float* inv_std = inv_std_.data_as<float>();
  if (training) {
    std::vector<double> sum(c_count, 0.0), sum_sq(c_count, 0.0);
    // Shifted by the first row's values so that FP32 partial sums of squares do not cancel.
    std::vector<float> shift(c_count);
    for (std::int64_t c = 0; c < channels_; ++c) shift[static_cast<std::size_t>(c)] = detail::load(in[c]);
    const std::vector<float> shift_rep = repeated(shift.data(), period);
    per_channel_sums_impl(rows, period, [&](std::int64_t begin, std::int64_t end, float* a, float* b) {
      moment_sums(in, shift_rep.data(), period.length, begin, end, a, b);
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
      if (!update_running_) continue;
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
  // y = x * scale + shift, with scale = gamma * inv_std and shift = beta - mean * scale (kept for backward).
  scale_.resize(c_count);
  shift_.resize(c_count);
  for (std::size_t c = 0; c < c_count; ++c) {
    scale_[c] = gamma[c] * inv_std[c];
    shift_[c] = beta[c] - mean[c] * scale_[c];
  }
  const std::vector<float> scale_rep = repeated(scale_.data(), period), shift_rep = repeated(shift_.data(), period);
  mpx::detail::parallel_ranges(rows, 4096, [&](std::int64_t begin, std::int64_t end) {
    scale_shift_rows(in, out, scale_rep.data(), shift_rep.data(), period.length, begin * channels_, end * channels_,
                     fused_relu_);
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
  const Period period = period_for(channels_);
  const std::vector<float> mean = repeated(mean_.data_as<float>(), period), scale = repeated(scale_.data(), period),
                           shift = repeated(shift_.data(), period);
  // With the fused ReLU the incoming gradient passes only where the output was positive, which is
  // recomputed from x (the forward's scale and shift, the same function) rather than read back from y.
  std::vector<double> sum_dy(c_count, 0.0), sum_dy_xhat(c_count, 0.0);
  per_channel_sums_impl(rows, period, [&](std::int64_t begin, std::int64_t end, float* a, float* b) {
    // x-hat: times inv_std below
    gradient_sums(dy_data, x, mean.data(), scale.data(), shift.data(), period.length, begin, end, fused_relu_, a, b);
  }, sum_dy, sum_dy_xhat);
  for (std::int64_t c = 0; c < channels_; ++c) sum_dy_xhat[c] *= inv_std_.data_as<float>()[c];
  const float* inv_std = inv_std_.data_as<float>();
  std::vector<float> mean_dy(c_count), mean_dy_xhat(c_count);
  for (std::int64_t c = 0; c < channels_; ++c) {
    gamma_.grad.data_as<float>()[c] = static_cast<float>(sum_dy_xhat[c]);
    beta_.grad.data_as<float>()[c] = static_cast<float>(sum_dy[c]);
    mean_dy[c] = static_cast<float>(sum_dy[c] / count);
    mean_dy_xhat[c] = static_cast<float>(sum_dy_xhat[c] / count);
  }
  T* out = detail::mutable_elements<T>(grad_input_);
  const std::vector<float> inv_std_rep = repeated(inv_std, period), mean_dy_rep = repeated(mean_dy.data(), period),
                           mean_dy_xhat_rep = repeated(mean_dy_xhat.data(), period);
  const GradientFactors factors{mean.data(),  inv_std_rep.data(), scale.data(), shift.data(), mean_dy_rep.data(),
                                mean_dy_xhat_rep.data()};
  mpx::detail::parallel_ranges(rows, 4096, [&](std::int64_t begin, std::int64_t end) {
    input_gradient_rows(dy_data, x, factors, out, period.length, begin * channels_, end * channels_, fused_relu_);
  });
}

}  // namespace mpx::nn
