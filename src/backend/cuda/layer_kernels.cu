// ReLU, GELU, residual add, dtype conversion, zero fill and copies on the context's stream: the device
// twins of src/backend/cpu/pointwise.cpp's ops and of the CPU backend's convert (bit-identical narrowing
// through the shared conversion lanes). GELU is evaluated in double, as the CPU backend does.
#include "launch.cuh"
#include "mpx/backend/cuda_kernels.h"

namespace mpx::cuda::kernels {

using detail::blocks_for;
using detail::kind_of;
using detail::kThreads;
using detail::stream_of;

namespace {

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;

__global__ void relu_forward_kernel(const void* x, std::uint8_t kind, std::int64_t count, void* y) {
  MPX_GRID_STRIDE(i, count) {
    const float v = elements::load(x, i, kind);
    elements::store(y, i, kind, v <= 0.0f ? 0.0f : v);  // a NaN propagates, as in PyTorch
  }
}

__global__ void gelu_forward_kernel(const void* x, std::uint8_t kind, std::int64_t count, bool tanh_approx, void* y) {
  MPX_GRID_STRIDE(i, count) {
    const double v = elements::load(x, i, kind);
    const double cdf = tanh_approx ? 0.5 * (1.0 + tanh(kSqrt2OverPi * (v + 0.044715 * v * v * v)))
                                   : 0.5 * (1.0 + erf(v * kInvSqrt2));
    elements::store(y, i, kind, static_cast<float>(v * cdf));
  }
}

__global__ void gelu_backward_kernel(const void* x, const void* dy, std::uint8_t kind, std::int64_t count,
                                     bool tanh_approx, void* dx) {
  MPX_GRID_STRIDE(i, count) {
    const double v = elements::load(x, i, kind);
    double derivative;
    if (tanh_approx) {
      const double t = tanh(kSqrt2OverPi * (v + 0.044715 * v * v * v));
      derivative = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * kSqrt2OverPi * (1.0 + 3.0 * 0.044715 * v * v);
    } else {
      derivative = 0.5 * (1.0 + erf(v * kInvSqrt2)) + v * kInvSqrt2Pi * exp(-0.5 * v * v);
    }
    elements::store(dx, i, kind, static_cast<float>(elements::load(dy, i, kind) * derivative));
  }
}

__global__ void add_kernel(const void* a, const void* b, std::uint8_t kind, std::int64_t count, void* sum) {
  MPX_GRID_STRIDE(i, count) { elements::store(sum, i, kind, elements::load(a, i, kind) + elements::load(b, i, kind)); }
}

__global__ void convert_kernel(const void* src, std::uint8_t from, void* dst, std::uint8_t to, std::int64_t count) {
  MPX_GRID_STRIDE(i, count) { elements::store(dst, i, to, elements::load(src, i, from)); }
}

}  // namespace

void relu_forward(DeviceContext& ctx, const void* x, DType dtype, std::int64_t count, void* y) {
  relu_forward_kernel<<<blocks_for(count), kThreads, 0, stream_of(ctx)>>>(x, kind_of(dtype), count, y);
  MPX_CUDA_CHECK_LAUNCH("relu_forward", count);
}

void gelu_forward(DeviceContext& ctx, const void* x, DType dtype, std::int64_t count, bool tanh_approximation, void* y) {
  gelu_forward_kernel<<<blocks_for(count), kThreads, 0, stream_of(ctx)>>>(x, kind_of(dtype), count,
                                                                          tanh_approximation, y);
  MPX_CUDA_CHECK_LAUNCH("gelu_forward", count);
}

void gelu_backward(DeviceContext& ctx, const void* x, const void* dy, DType dtype, std::int64_t count,
                   bool tanh_approximation, void* dx) {
  gelu_backward_kernel<<<blocks_for(count), kThreads, 0, stream_of(ctx)>>>(x, dy, kind_of(dtype), count,
                                                                           tanh_approximation, dx);
  MPX_CUDA_CHECK_LAUNCH("gelu_backward", count);
}

void add(DeviceContext& ctx, const void* a, const void* b, DType dtype, std::int64_t count, void* sum) {
  add_kernel<<<blocks_for(count), kThreads, 0, stream_of(ctx)>>>(a, b, kind_of(dtype), count, sum);
  MPX_CUDA_CHECK_LAUNCH("add", count);
}

void convert_elements(DeviceContext& ctx, const void* src, DType from, void* dst, DType to, std::int64_t count) {
  convert_kernel<<<blocks_for(count), kThreads, 0, stream_of(ctx)>>>(src, kind_of(from), dst, kind_of(to), count);
  MPX_CUDA_CHECK_LAUNCH("convert_elements", count);
}

void fill_zero(DeviceContext& ctx, void* data, std::size_t bytes) {
  if (bytes == 0) return;
  MPX_CUDA_CHECK(cudaMemsetAsync(data, 0, bytes, stream_of(ctx)));
}

void fill_bytes(DeviceContext& ctx, void* data, std::uint8_t value, std::size_t bytes) {
  if (bytes == 0) return;
  MPX_CUDA_CHECK(cudaMemsetAsync(data, value, bytes, stream_of(ctx)));
}

void copy(DeviceContext& ctx, void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0 || dst == src) return;
  MPX_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_of(ctx)));
}

}  // namespace mpx::cuda::kernels
