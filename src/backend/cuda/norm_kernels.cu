// Convolution's im2col/col2im, per-column sums and BatchNorm on the GPU: the device twins of
// src/nn/conv2d.cpp (columns), the bias gradients and src/nn/batch_norm.cpp. Column reductions run in
// two launches: a [row blocks x column tiles] grid of 32 x 8 threads writes one double-accumulated partial
// per row block and column, then one thread per column adds the partials in order (deterministic).
#include "column_reduce.cuh"
#include "launch.cuh"
#include "mpx/backend/cuda_kernels.h"

namespace mpx::cuda::kernels {

using detail::blocks_for;
using detail::kind_of;
using detail::kThreads;
using detail::stream_of;
using detail::column_partials;
using detail::column_totals;
using detail::row_blocks;

namespace {

__global__ void im2col_kernel(backend::ConvShape s, const void* x, std::uint8_t kind, void* cols) {
  const std::int64_t oh = s.out_height(), ow = s.out_width(), kk = s.kernel * s.kernel;
  const std::int64_t patch = s.in_channels * kk, total = s.batch * oh * ow * patch;
  MPX_GRID_STRIDE(i, total) {
    const std::int64_t row = i / patch, col = i % patch;
    const std::int64_t c = col / kk, kh = (col % kk) / s.kernel, kw = col % s.kernel;
    const std::int64_t n = row / (oh * ow), oy = (row / ow) % oh, ox = row % ow;
    const std::int64_t y = oy * s.stride - s.padding + kh, xx = ox * s.stride - s.padding + kw;
    float v = 0.0f;
    if (y >= 0 && y < s.height && xx >= 0 && xx < s.width) {
      v = elements::load(x, ((n * s.height + y) * s.width + xx) * s.in_channels + c, kind);
    }
    elements::store(cols, i, kind, v);  // same dtype: exact
  }
}

__global__ void col2im_kernel(backend::ConvShape s, const float* dcols, void* dx, std::uint8_t kind) {
  const std::int64_t oh = s.out_height(), ow = s.out_width(), kk = s.kernel * s.kernel;
  const std::int64_t patch = s.in_channels * kk, total = s.batch * s.height * s.width * s.in_channels;
  MPX_GRID_STRIDE(i, total) {
    const std::int64_t c = i % s.in_channels, xx = (i / s.in_channels) % s.width;
    const std::int64_t y = (i / (s.in_channels * s.width)) % s.height, n = i / (s.in_channels * s.width * s.height);
    float sum = 0.0f;
    for (std::int64_t kh = 0; kh < s.kernel; ++kh) {
      const std::int64_t ty = y + s.padding - kh;
      if (ty < 0 || ty % s.stride != 0 || ty / s.stride >= oh) continue;
      for (std::int64_t kw = 0; kw < s.kernel; ++kw) {
        const std::int64_t tx = xx + s.padding - kw;
        if (tx < 0 || tx % s.stride != 0 || tx / s.stride >= ow) continue;
        const std::int64_t row = (n * oh + ty / s.stride) * ow + tx / s.stride;
        sum += dcols[row * patch + c * kk + kh * s.kernel + kw];
      }
    }
    elements::store(dx, i, kind, sum);
  }
}

// What a column reduction adds per element: up to two sums per column.
struct PlainSum {
  const void* x;
  std::uint8_t kind;
  __device__ void operator()(std::int64_t r, std::int64_t c, std::int64_t columns, double& a, double&) const {
    a += elements::load(x, r * columns + c, kind);
  }
};

// Shifted by the first row so that the sums of squares do not cancel (as the CPU layer).
struct MomentSums {
  const void* x;
  std::uint8_t kind;
  __device__ void operator()(std::int64_t r, std::int64_t c, std::int64_t columns, double& a, double& b) const {
    const double d = static_cast<double>(elements::load(x, r * columns + c, kind)) - elements::load(x, c, kind);
    a += d;
    b += d * d;
  }
};

// sum(g) and sum(g * (x - mean)) with g the incoming gradient, masked by the fused ReLU.
struct GradientSums {
  const void* x;
  const void* dy;
  std::uint8_t kind;
  const float* scale;  // gamma * inv_std
  const float* shift;  // beta - mean * scale
  const float* mean;
  bool relu;
  __device__ void operator()(std::int64_t r, std::int64_t c, std::int64_t columns, double& a, double& b) const {
    const std::int64_t i = r * columns + c;
    const float xv = elements::load(x, i, kind);
    float g = elements::load(dy, i, kind);
    if (relu && !(xv * scale[c] + shift[c] > 0.0f)) g = 0.0f;
    a += g;
    b += static_cast<double>(g) * (xv - mean[c]);
  }
};

__global__ void column_sums_finish(const double* partials, std::int64_t blocks, std::int64_t columns, float* out) {
  MPX_GRID_STRIDE(c, columns) {
    double a, b;
    column_totals(partials, blocks, columns, c, a, b);
    out[c] = static_cast<float>(a);
  }
}

// The workspace: partials (2 doubles per row block and column), then scale and shift (2 floats per column).
float* scale_of(float* workspace, std::int64_t rows, std::int64_t columns) {
  return workspace + row_blocks(rows) * columns * 4;
}

__global__ void batch_norm_statistics(const double* partials, std::int64_t blocks, BatchNormShape s, const void* x,
                                      std::uint8_t kind, const float* gamma, const float* beta, float* running_mean,
                                      float* running_var, bool update_running, float* mean, float* inv_std,
                                      float* scale, float* shift) {
  MPX_GRID_STRIDE(c, s.channels) {
    double sum, sum_sq;
    column_totals(partials, blocks, s.channels, c, sum, sum_sq);
    const double count = static_cast<double>(s.rows);
    const double k = elements::load(x, c, kind);
    sum_sq += 2 * k * sum + count * k * k;  // back to moments of x
    sum += count * k;
    const double m = sum / count;
    const double var = fmax(0.0, sum_sq / count - m * m);
    mean[c] = static_cast<float>(m);
    inv_std[c] = static_cast<float>(1.0 / sqrt(var + s.eps));
    if (update_running) {
      const double unbiased = s.rows > 1 ? var * count / (count - 1) : var;
      running_mean[c] = static_cast<float>((1 - s.momentum) * running_mean[c] + s.momentum * m);
      running_var[c] = static_cast<float>((1 - s.momentum) * running_var[c] + s.momentum * unbiased);
    }
    scale[c] = gamma[c] * inv_std[c];
    shift[c] = beta[c] - mean[c] * scale[c];
  }
}

__global__ void batch_norm_inference_factors(BatchNormShape s, const float* gamma, const float* beta,
                                             const float* running_mean, const float* running_var, float* scale,
                                             float* shift) {
  MPX_GRID_STRIDE(c, s.channels) {
    const float inv_std = 1.0f / sqrtf(running_var[c] + s.eps);
    scale[c] = gamma[c] * inv_std;
    shift[c] = beta[c] - running_mean[c] * scale[c];
  }
}

__global__ void scale_shift_kernel(const void* x, std::uint8_t kind, std::int64_t count, std::int64_t channels,
                                   const float* scale, const float* shift, bool relu, void* y) {
  MPX_GRID_STRIDE(i, count) {
    const std::int64_t c = i % channels;
    float v = elements::load(x, i, kind) * scale[c] + shift[c];
    if (relu && !(v > 0.0f) && v == v) v = 0.0f;  // max(0, v), NaN kept
    elements::store(y, i, kind, v);
  }
}

// scale and shift as the training forward computed them, from its saved mean and inv_std.
__global__ void forward_factors(std::int64_t channels, const float* gamma, const float* beta, const float* mean,
                                const float* inv_std, float* scale, float* shift) {
  MPX_GRID_STRIDE(c, channels) {
    scale[c] = gamma[c] * inv_std[c];
    shift[c] = beta[c] - mean[c] * scale[c];
  }
}

__global__ void batch_norm_gradient_factors(const double* partials, std::int64_t blocks, BatchNormShape s,
                                            const float* inv_std, float* dgamma, float* dbeta, float* mean_dy,
                                            float* mean_dy_xhat) {
  MPX_GRID_STRIDE(c, s.channels) {
    double sum_dy, sum_dy_xc;
    column_totals(partials, blocks, s.channels, c, sum_dy, sum_dy_xc);
    const double sum_dy_xhat = sum_dy_xc * inv_std[c];
    dgamma[c] = static_cast<float>(sum_dy_xhat);
    dbeta[c] = static_cast<float>(sum_dy);
    mean_dy[c] = static_cast<float>(sum_dy / static_cast<double>(s.rows));
    mean_dy_xhat[c] = static_cast<float>(sum_dy_xhat / static_cast<double>(s.rows));
  }
}

__global__ void batch_norm_input_gradient(const void* x, const void* dy, std::uint8_t kind, BatchNormShape s,
                                          const float* mean, const float* inv_std, const float* scale,
                                          const float* shift, const float* mean_dy, const float* mean_dy_xhat,
                                          void* dx) {
  MPX_GRID_STRIDE(i, s.rows * s.channels) {
    const std::int64_t c = i % s.channels;
    const float xv = elements::load(x, i, kind);
    float g = elements::load(dy, i, kind);
    if (s.relu && !(xv * scale[c] + shift[c] > 0.0f)) g = 0.0f;
    const float xhat = (xv - mean[c]) * inv_std[c];
    elements::store(dx, i, kind, scale[c] * (g - mean_dy[c] - xhat * mean_dy_xhat[c]));
  }
}

}  // namespace

void im2col(DeviceContext& ctx, const backend::ConvShape& s, const void* x, DType dtype, void* cols) {
  const std::int64_t total = s.batch * s.out_height() * s.out_width() * s.in_channels * s.kernel * s.kernel;
  im2col_kernel<<<blocks_for(total), kThreads, 0, stream_of(ctx)>>>(s, x, kind_of(dtype), cols);
  MPX_CUDA_CHECK_LAUNCH("im2col", total);
}

void col2im(DeviceContext& ctx, const backend::ConvShape& s, const float* dcols, void* dx, DType dtype) {
  const std::int64_t total = s.batch * s.height * s.width * s.in_channels;
  col2im_kernel<<<blocks_for(total), kThreads, 0, stream_of(ctx)>>>(s, dcols, dx, kind_of(dtype));
  MPX_CUDA_CHECK_LAUNCH("col2im", total);
}

std::size_t reduction_workspace_floats(std::int64_t rows, std::int64_t columns) {
  // 2 doubles per row block and column, then 4 floats per column (scale, shift and two more factors).
  return static_cast<std::size_t>(row_blocks(rows) * columns * 4 + columns * 4);
}

void column_sums(DeviceContext& ctx, const void* x, DType dtype, std::int64_t rows, std::int64_t columns, float* out,
                 float* workspace) {
  column_partials(ctx, PlainSum{x, kind_of(dtype)}, rows, columns, workspace, "column_sums");
  column_sums_finish<<<blocks_for(columns), kThreads, 0, stream_of(ctx)>>>(reinterpret_cast<double*>(workspace),
                                                                           row_blocks(rows), columns, out);
  MPX_CUDA_CHECK_LAUNCH("column_sums/finish", columns);
}

void batch_norm_forward_training(DeviceContext& ctx, const BatchNormShape& s, const void* x, DType dtype,
                                 const float* gamma, const float* beta, float* running_mean, float* running_var,
                                 bool update_running, float* mean, float* inv_std, float* workspace, void* y) {
  const std::uint8_t kind = kind_of(dtype);
  column_partials(ctx, MomentSums{x, kind}, s.rows, s.channels, workspace, "batch_norm/moments");
  float* scale = scale_of(workspace, s.rows, s.channels);
  float* shift = scale + s.channels;
  batch_norm_statistics<<<blocks_for(s.channels), kThreads, 0, stream_of(ctx)>>>(
      reinterpret_cast<double*>(workspace), row_blocks(s.rows), s, x, kind, gamma, beta, running_mean, running_var,
      update_running, mean, inv_std, scale, shift);
  MPX_CUDA_CHECK_LAUNCH("batch_norm/statistics", s.channels);
  scale_shift_kernel<<<blocks_for(s.rows * s.channels), kThreads, 0, stream_of(ctx)>>>(x, kind, s.rows * s.channels,
                                                                                       s.channels, scale, shift, s.relu, y);
  MPX_CUDA_CHECK_LAUNCH("batch_norm/apply", s.rows * s.channels);
}

void batch_norm_forward_inference(DeviceContext& ctx, const BatchNormShape& s, const void* x, DType dtype,
                                  const float* gamma, const float* beta, const float* running_mean,
                                  const float* running_var, float* workspace, void* y) {
  float* scale = scale_of(workspace, s.rows, s.channels);
  float* shift = scale + s.channels;
  batch_norm_inference_factors<<<blocks_for(s.channels), kThreads, 0, stream_of(ctx)>>>(s, gamma, beta, running_mean,
                                                                                        running_var, scale, shift);
  MPX_CUDA_CHECK_LAUNCH("batch_norm/inference_factors", s.channels);
  scale_shift_kernel<<<blocks_for(s.rows * s.channels), kThreads, 0, stream_of(ctx)>>>(
      x, kind_of(dtype), s.rows * s.channels, s.channels, scale, shift, s.relu, y);
  MPX_CUDA_CHECK_LAUNCH("batch_norm/apply", s.rows * s.channels);
}

void batch_norm_backward(DeviceContext& ctx, const BatchNormShape& s, const void* x, const void* dy, DType dtype,
                         const float* gamma, const float* beta, const float* mean, const float* inv_std, float* workspace,
                         void* dx, float* dgamma, float* dbeta) {
  const std::uint8_t kind = kind_of(dtype);
  // The forward's scale and shift are recomputed (the workspace may have served another layer since).
  float* scale = scale_of(workspace, s.rows, s.channels);
  float* shift = scale + s.channels;
  float* mean_dy = shift + s.channels;
  float* mean_dy_xhat = mean_dy + s.channels;
  forward_factors<<<blocks_for(s.channels), kThreads, 0, stream_of(ctx)>>>(s.channels, gamma, beta, mean, inv_std,
                                                                          scale, shift);
  MPX_CUDA_CHECK_LAUNCH("batch_norm/forward_factors", s.channels);
  column_partials(ctx, GradientSums{x, dy, kind, scale, shift, mean, s.relu}, s.rows, s.channels, workspace,
                  "batch_norm/gradient_sums");
  batch_norm_gradient_factors<<<blocks_for(s.channels), kThreads, 0, stream_of(ctx)>>>(
      reinterpret_cast<double*>(workspace), row_blocks(s.rows), s, inv_std, dgamma, dbeta, mean_dy, mean_dy_xhat);
  MPX_CUDA_CHECK_LAUNCH("batch_norm/gradient_factors", s.channels);
  batch_norm_input_gradient<<<blocks_for(s.rows * s.channels), kThreads, 0, stream_of(ctx)>>>(
      x, dy, kind, s, mean, inv_std, scale, shift, mean_dy, mean_dy_xhat, dx);
  MPX_CUDA_CHECK_LAUNCH("batch_norm/input_gradient", s.rows * s.channels);
}

}  // namespace mpx::cuda::kernels
