// LayerNorm over the last dimension on the GPU, the device twin of src/nn/transformer_layers.cpp: one block
// per row reduces the row's sums in double (mean, biased variance), keeps mean and inv_std per row for
// backward, and writes y = x-hat * gamma + beta; backward recomputes x-hat from x, reduces the row's two
// gradient sums per block, and takes dgamma/dbeta through the deterministic column reduction.
#include "column_reduce.cuh"
#include "mpx/backend/cuda_kernels.h"

namespace mpx::cuda::kernels {

using detail::column_partials;
using detail::column_totals;
using detail::kind_of;
using detail::row_blocks;
using detail::stream_of;

namespace {

constexpr int kRowThreads = 256;

// Both sums of a block, valid in every thread afterwards.
__device__ void block_sum2(double& a, double& b) {
  __shared__ double shared_a[kRowThreads / 32], shared_b[kRowThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    a += __shfl_down_sync(0xFFFFFFFFu, a, offset);
    b += __shfl_down_sync(0xFFFFFFFFu, b, offset);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    shared_a[warp] = a;
    shared_b[warp] = b;
  }
  __syncthreads();
  a = 0;
  b = 0;
  for (int w = 0; w < kRowThreads / 32; ++w) {  // every thread, same order: the same total everywhere
    a += shared_a[w];
    b += shared_b[w];
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kRowThreads) layer_norm_forward_kernel(LayerNormShape s, const void* x, std::uint8_t kind,
                                                                        const float* gamma, const float* beta,
                                                                        float* mean_out, float* inv_std_out, void* y) {
  const std::int64_t row = blockIdx.x, base = row * s.features;
  double sum = 0, sum_sq = 0;
  for (std::int64_t c = threadIdx.x; c < s.features; c += kRowThreads) {
    const double v = elements::load(x, base + c, kind);
    sum += v;
    sum_sq += v * v;
  }
  block_sum2(sum, sum_sq);
  const double mean = sum / static_cast<double>(s.features);
  const double var = fmax(0.0, sum_sq / static_cast<double>(s.features) - mean * mean);
  const auto inv_std = static_cast<float>(1.0 / sqrt(var + s.eps));
  if (threadIdx.x == 0) {
    mean_out[row] = static_cast<float>(mean);
    inv_std_out[row] = inv_std;
  }
  for (std::int64_t c = threadIdx.x; c < s.features; c += kRowThreads) {
    const float xhat = (elements::load(x, base + c, kind) - static_cast<float>(mean)) * inv_std;
    elements::store(y, base + c, kind, xhat * gamma[c] + beta[c]);
  }
}

__global__ void __launch_bounds__(kRowThreads) layer_norm_input_gradient(LayerNormShape s, const void* x, const void* dy,
                                                                        std::uint8_t kind, const float* gamma,
                                                                        const float* mean, const float* inv_std, void* dx) {
  const std::int64_t row = blockIdx.x, base = row * s.features;
  double mean_g = 0, mean_g_xhat = 0;
  for (std::int64_t c = threadIdx.x; c < s.features; c += kRowThreads) {
    const float xhat = (elements::load(x, base + c, kind) - mean[row]) * inv_std[row];
    const double gx = static_cast<double>(elements::load(dy, base + c, kind)) * gamma[c];
    mean_g += gx;
    mean_g_xhat += gx * xhat;
  }
  block_sum2(mean_g, mean_g_xhat);
  mean_g /= static_cast<double>(s.features);
  mean_g_xhat /= static_cast<double>(s.features);
  for (std::int64_t c = threadIdx.x; c < s.features; c += kRowThreads) {
    const float xhat = (elements::load(x, base + c, kind) - mean[row]) * inv_std[row];
    const double g = elements::load(dy, base + c, kind);
    elements::store(dx, base + c, kind, static_cast<float>(inv_std[row] * (g * gamma[c] - mean_g - xhat * mean_g_xhat)));
  }
}

// sum over rows of g * x-hat (dgamma) and of g (dbeta).
struct LayerNormParameterSums {
  const void* x;
  const void* dy;
  std::uint8_t kind;
  const float* mean;
  const float* inv_std;
  __device__ void operator()(std::int64_t r, std::int64_t c, std::int64_t columns, double& a, double& b) const {
    const std::int64_t i = r * columns + c;
    const float xhat = (elements::load(x, i, kind) - mean[r]) * inv_std[r];
    const float g = elements::load(dy, i, kind);
    a += g * xhat;
    b += g;
  }
};

__global__ void layer_norm_parameter_gradients(const double* partials, std::int64_t blocks, std::int64_t features,
                                               float* dgamma, float* dbeta) {
  MPX_GRID_STRIDE(c, features) {
    double a, b;
    column_totals(partials, blocks, features, c, a, b);
    dgamma[c] = static_cast<float>(a);
    dbeta[c] = static_cast<float>(b);
  }
}

}  // namespace

void layer_norm_forward(DeviceContext& ctx, const LayerNormShape& s, const void* x, DType dtype, const float* gamma,
                        const float* beta, float* mean, float* inv_std, void* y) {
  if (s.rows == 0) return;
  layer_norm_forward_kernel<<<static_cast<unsigned>(s.rows), kRowThreads, 0, stream_of(ctx)>>>(s, x, kind_of(dtype), gamma,
                                                                                              beta, mean, inv_std, y);
  MPX_CUDA_CHECK_LAUNCH("layer_norm_forward", s.rows * s.features);
}

void layer_norm_backward(DeviceContext& ctx, const LayerNormShape& s, const void* x, const void* dy, DType dtype,
                         const float* gamma, const float* mean, const float* inv_std, float* workspace, void* dx,
                         float* dgamma, float* dbeta) {
  if (s.rows == 0) return;
  const std::uint8_t kind = kind_of(dtype);
  layer_norm_input_gradient<<<static_cast<unsigned>(s.rows), kRowThreads, 0, stream_of(ctx)>>>(s, x, dy, kind, gamma, mean,
                                                                                              inv_std, dx);
  MPX_CUDA_CHECK_LAUNCH("layer_norm_backward", s.rows * s.features);
  column_partials(ctx, LayerNormParameterSums{x, dy, kind, mean, inv_std}, s.rows, s.features, workspace,
                  "layer_norm/parameter_sums");
  layer_norm_parameter_gradients<<<detail::blocks_for(s.features), detail::kThreads, 0, stream_of(ctx)>>>(
      reinterpret_cast<const double*>(workspace), row_blocks(s.rows), s.features, dgamma, dbeta);
  MPX_CUDA_CHECK_LAUNCH("layer_norm/parameter_gradients", s.features);
}

}  // namespace mpx::cuda::kernels
