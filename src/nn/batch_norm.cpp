// BatchNorm2d on NHWC: per-channel statistics over N*H*W rows, accumulated in double; FP32 storage.
#include <omp.h>

#include <cmath>
#include <string>
#include <vector>

#include "init.h"
#include "mpx/core/error.h"
#include "mpx/nn/layers.h"

namespace mpx::nn {

namespace {
// Two per-channel sums over all rows, in double: each thread sums its rows, then the partial sums are
// added in thread order (deterministic for a given thread count).
template <class Accumulate>
void per_channel_sums_impl(std::int64_t rows, std::int64_t channels, Accumulate accumulate, std::vector<double>& a,
                           std::vector<double>& b) {
  const int threads = rows > 4096 ? omp_get_max_threads() : 1;
  std::vector<std::vector<double>> part_a(static_cast<std::size_t>(threads)), part_b(static_cast<std::size_t>(threads));
#pragma omp parallel num_threads(threads)
  {
    const auto t = static_cast<std::size_t>(omp_get_thread_num());
    const auto n = static_cast<std::int64_t>(omp_get_num_threads());
    std::vector<double> la(static_cast<std::size_t>(channels), 0.0), lb(static_cast<std::size_t>(channels), 0.0);
    const std::int64_t begin = rows * static_cast<std::int64_t>(t) / n, end = rows * (static_cast<std::int64_t>(t) + 1) / n;
    for (std::int64_t r = begin; r < end; ++r) {
      for (std::int64_t c = 0; c < channels; ++c) accumulate(r, c, la[static_cast<std::size_t>(c)], lb[static_cast<std::size_t>(c)]);
    }
    part_a[t] = std::move(la);
    part_b[t] = std::move(lb);
  }
  for (std::size_t t = 0; t < part_a.size(); ++t) {
    for (std::size_t c = 0; c < a.size(); ++c) {
      if (part_a[t].empty()) continue;
      a[c] += part_a[t][c];
      b[c] += part_b[t][c];
    }
  }
}
}  // namespace

BatchNorm2d::BatchNorm2d(std::string name, std::int64_t channels, float momentum, float eps)
    : Layer(std::move(name)), channels_(channels), momentum_(momentum), eps_(eps) {
  gamma_.name = this->name() + ".weight";
  beta_.name = this->name() + ".bias";
}

Shape BatchNorm2d::plan(const Shape& input, Context& ctx) {
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
  normalized_ = Tensor::empty(input, DType::f32, MemoryCategory::activations, &ctx.memory);
  output_ = Tensor::empty(input, DType::f32, MemoryCategory::activations, &ctx.memory);
  grad_input_ = Tensor::empty(input, DType::f32, MemoryCategory::activations, &ctx.memory);
  return input;
}

Tensor BatchNorm2d::forward(const Tensor& x, Context&, bool training) {
  const std::int64_t rows = x.numel() / channels_;
  const auto count = static_cast<double>(rows);
  const std::size_t c_count = static_cast<std::size_t>(channels_);
  const float* in = x.data_as<float>();
  float* mean = mean_.data_as<float>();
  float* inv_std = inv_std_.data_as<float>();
  if (training) {
    std::vector<double> sum(c_count, 0.0), sum_sq(c_count, 0.0);
    per_channel_sums_impl(rows, channels_, [&](std::int64_t r, std::int64_t c, double& a, double& b) {
      const float v = in[r * channels_ + c];
      a += v;
      b += static_cast<double>(v) * v;
    }, sum, sum_sq);
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
  Tensor y = output_.first_rows(x.dim(0));
  Tensor xhat_t = normalized_.first_rows(x.dim(0));
  float* out = y.data_as<float>();
  float* xhat = xhat_t.data_as<float>();
#pragma omp parallel for if (rows > 4096)
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < channels_; ++c) {
      const std::int64_t i = r * channels_ + c;
      xhat[i] = (in[i] - mean[c]) * inv_std[c];
      out[i] = gamma[c] * xhat[i] + beta[c];
    }
  }
  return y;
}

Tensor BatchNorm2d::backward(const Tensor& dy, Context&) {
  const std::int64_t rows = dy.numel() / channels_;
  const auto count = static_cast<double>(rows);
  const std::size_t c_count = static_cast<std::size_t>(channels_);
  const float* g = dy.data_as<float>();
  const float* xhat = normalized_.data_as<float>();
  std::vector<double> sum_dy(c_count, 0.0), sum_dy_xhat(c_count, 0.0);
  per_channel_sums_impl(rows, channels_, [&](std::int64_t r, std::int64_t c, double& a, double& b) {
    const std::int64_t i = r * channels_ + c;
    a += g[i];
    b += static_cast<double>(g[i]) * xhat[i];
  }, sum_dy, sum_dy_xhat);
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
  Tensor dx = grad_input_.first_rows(dy.dim(0));
  float* out = dx.data_as<float>();
#pragma omp parallel for if (rows > 4096)
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < channels_; ++c) {
      const std::int64_t i = r * channels_ + c;
      out[i] = scale[c] * (g[i] - mean_dy[c] - xhat[i] * mean_dy_xhat[c]);
    }
  }
  return dx;
}

}  // namespace mpx::nn
