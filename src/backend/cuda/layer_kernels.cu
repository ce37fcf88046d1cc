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

// One thread per row, in the CPU backend's order: max, double sum of exponentials, probabilities, the row's
// loss (the host adds the rows' losses in double). A label outside the classes marks the row NaN.
__global__ void cross_entropy_forward_kernel(const void* logits, std::uint8_t kind, const std::uint8_t* labels,
                                             std::int64_t rows, std::int64_t classes, float* p, double* row_loss) {
  MPX_GRID_STRIDE(r, rows) {
    float max = elements::load(logits, r * classes, kind);
    for (std::int64_t c = 1; c < classes; ++c) max = fmaxf(max, elements::load(logits, r * classes + c, kind));
    double sum = 0.0;
    for (std::int64_t c = 0; c < classes; ++c) {
      sum += exp(static_cast<double>(elements::load(logits, r * classes + c, kind)) - max);
    }
    const double log_sum = log(sum) + max;
    for (std::int64_t c = 0; c < classes; ++c) {
      p[r * classes + c] = static_cast<float>(exp(elements::load(logits, r * classes + c, kind) - log_sum));
    }
    row_loss[r] = labels[r] < classes ? log_sum - elements::load(logits, r * classes + labels[r], kind) : nan("");
  }
}

__global__ void cross_entropy_backward_kernel(const float* p, const std::uint8_t* labels, std::int64_t rows,
                                              std::int64_t classes, float factor, void* grad, std::uint8_t kind) {
  MPX_GRID_STRIDE(i, rows * classes) {
    const std::int64_t r = i / classes, c = i % classes;
    elements::store(grad, i, kind, (p[i] - (c == labels[r] ? 1.0f : 0.0f)) * factor);
  }
}

}  // namespace

void cross_entropy_forward(DeviceContext& ctx, const void* logits, DType dtype, const std::uint8_t* labels,
                           std::int64_t rows, std::int64_t classes, float* probabilities, double* row_loss) {
  cross_entropy_forward_kernel<<<blocks_for(rows), kThreads, 0, stream_of(ctx)>>>(logits, kind_of(dtype), labels, rows,
                                                                                  classes, probabilities, row_loss);
  MPX_CUDA_CHECK_LAUNCH("cross_entropy_forward", rows);
}

void cross_entropy_backward(DeviceContext& ctx, const float* probabilities, const std::uint8_t* labels,
                            std::int64_t rows, std::int64_t classes, float factor, void* grad, DType dtype) {
  cross_entropy_backward_kernel<<<blocks_for(rows * classes), kThreads, 0, stream_of(ctx)>>>(
      probabilities, labels, rows, classes, factor, grad, kind_of(dtype));
  MPX_CUDA_CHECK_LAUNCH("cross_entropy_backward", rows * classes);
}

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

void copy(DeviceContext& ctx, void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0 || dst == src) return;
  MPX_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_of(ctx)));
}

}  // namespace mpx::cuda::kernels
