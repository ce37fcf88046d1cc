// Pooling, ReLU's gradient, dropout, the FP32 softmax cross-entropy, batch gathering and the step
// counter on the GPU: device twins of src/nn/pointwise.cpp and src/nn/softmax_cross_entropy.cpp.
#include "launch.cuh"
#include "mpx/backend/cuda_kernels.h"
#include "mpx/numeric/philox.h"

namespace mpx::cuda::kernels {

using detail::blocks_for;
using detail::kind_of;
using detail::kThreads;
using detail::stream_of;

namespace {

__device__ __forceinline__ bool is_nan(float v) { return v != v; }

__global__ void max_pool_forward_kernel(const void* x, std::uint8_t kind, std::int64_t n, std::int64_t h, std::int64_t w,
                                        std::int64_t c, std::int64_t k, void* y) {
  const std::int64_t oh = h / k, ow = w / k, total = n * oh * ow * c;
  MPX_GRID_STRIDE(i, total) {
    const std::int64_t ch = i % c, j = (i / c) % ow, r = (i / (c * ow)) % oh, b = i / (c * ow * oh);
    float best = 0.0f;
    for (std::int64_t p = 0; p < k * k; ++p) {
      const float v = elements::load(x, ((b * h + r * k + p / k) * w + j * k + p % k) * c + ch, kind);
      // A NaN wins and propagates; on ties the first position keeps it.
      if (p == 0 || v > best || (is_nan(v) && !is_nan(best))) best = v;
    }
    elements::store(y, i, kind, best);
  }
}

__global__ void max_pool_backward_kernel(const void* x, const void* y, const void* dy, std::uint8_t kind, std::int64_t n,
                                         std::int64_t h, std::int64_t w, std::int64_t c, std::int64_t k, void* dx) {
  const std::int64_t oh = h / k, ow = w / k, total = n * oh * ow * c;
  MPX_GRID_STRIDE(i, total) {
    const std::int64_t ch = i % c, j = (i / c) % ow, r = (i / (c * ow)) % oh, b = i / (c * ow * oh);
    const float m = elements::load(y, i, kind), g = elements::load(dy, i, kind);
    bool taken = false;
    for (std::int64_t p = 0; p < k * k; ++p) {
      const std::int64_t at = ((b * h + r * k + p / k) * w + j * k + p % k) * c + ch;
      const float v = elements::load(x, at, kind);
      const bool is_max = !taken && (v == m || (is_nan(m) && is_nan(v)));
      elements::store(dx, at, kind, is_max ? g : 0.0f);
      taken = taken || is_max;
    }
  }
}

__global__ void relu_backward_kernel(const void* y, const void* dy, std::uint8_t kind, std::int64_t count, void* dx) {
  MPX_GRID_STRIDE(i, count) {
    elements::store(dx, i, kind, elements::load(y, i, kind) > 0.0f ? elements::load(dy, i, kind) : 0.0f);
  }
}

__global__ void dropout_forward_kernel(DropoutArgs args, const std::uint64_t* step, const void* x, std::uint8_t kind,
                                       std::int64_t count, void* y, std::uint8_t* keep) {
  const auto threshold = static_cast<std::uint32_t>(static_cast<double>(args.probability) * 4294967296.0);
  const float keep_scale = 1.0f / (1.0f - args.probability);
  const std::uint64_t base = *step * args.planned_elements + args.element_offset;
  MPX_GRID_STRIDE(i, count) {
    const bool kept = numeric::random_u32(args.key, base + static_cast<std::uint64_t>(i)) >= threshold;
    keep[i] = kept;
    // x * (mask * scale), as the CPU layer: a dropped negative value gives -0 and an infinity NaN there too.
    elements::store(y, i, kind, elements::load(x, i, kind) * (static_cast<float>(kept) * keep_scale));
  }
}

__global__ void dropout_backward_kernel(float keep_scale, const void* dy, const std::uint8_t* keep, std::uint8_t kind,
                                        std::int64_t count, void* dx) {
  MPX_GRID_STRIDE(i, count) {
    elements::store(dx, i, kind, elements::load(dy, i, kind) * (static_cast<float>(keep[i]) * keep_scale));
  }
}

// One warp per row: max, sum of exponentials and the row's loss in FP32; the gradient in the same pass.
__global__ void softmax_cross_entropy_rows(const float* logits, const std::uint8_t* labels, std::int64_t rows,
                                           std::int64_t classes, const float* loss_scale, void* dlogits,
                                           std::uint8_t grad_kind, float* row_loss, int* row_correct) {
  const std::int64_t row = blockIdx.x * static_cast<std::int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float* z = logits + row * classes;
  float max_value = -INFINITY;
  std::int64_t arg_max = 0;
  for (std::int64_t j = lane; j < classes; j += 32) {
    if (z[j] > max_value || is_nan(z[j])) {
      max_value = z[j];
      arg_max = j;
    }
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const float other = __shfl_down_sync(0xFFFFFFFFu, max_value, offset);
    const std::int64_t other_arg = __shfl_down_sync(0xFFFFFFFFu, arg_max, offset);
    if (other > max_value || (other == max_value && other_arg < arg_max) || is_nan(other)) {
      max_value = other;
      arg_max = other_arg;
    }
  }
  max_value = __shfl_sync(0xFFFFFFFFu, max_value, 0);
  arg_max = __shfl_sync(0xFFFFFFFFu, arg_max, 0);
  float sum = 0.0f;
  for (std::int64_t j = lane; j < classes; j += 32) sum += expf(z[j] - max_value);
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xFFFFFFFFu, sum, offset);
  sum = __shfl_sync(0xFFFFFFFFu, sum, 0);
  const int label = labels[row];
  const float scale = (loss_scale != nullptr ? *loss_scale : 1.0f) / static_cast<float>(rows);
  for (std::int64_t j = lane; j < classes; j += 32) {
    const float p = expf(z[j] - max_value) / sum;
    elements::store(dlogits, row * classes + j, grad_kind, (p - (j == label ? 1.0f : 0.0f)) * scale);
  }
  if (lane == 0) {
    row_loss[row] = logf(sum) + max_value - z[label];
    row_correct[row] = arg_max == label;
  }
}

// One block adds the rows' losses in a fixed order (deterministic) and counts the correct ones.
__global__ void softmax_cross_entropy_total(const float* row_loss, const int* row_correct, std::int64_t rows,
                                            float* loss, int* correct) {
  __shared__ double shared_loss[kThreads];
  __shared__ int shared_correct[kThreads];
  double sum = 0;
  int hits = 0;
  for (std::int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    sum += row_loss[r];
    hits += row_correct[r];
  }
  shared_loss[threadIdx.x] = sum;
  shared_correct[threadIdx.x] = hits;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      shared_loss[threadIdx.x] += shared_loss[threadIdx.x + half];
      shared_correct[threadIdx.x] += shared_correct[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    *loss = static_cast<float>(shared_loss[0] / static_cast<double>(rows));
    if (correct != nullptr) *correct = shared_correct[0];
  }
}

__global__ void gather_batch_kernel(const std::uint8_t* images, const std::uint8_t* all_labels, std::int64_t pixels,
                                    const std::int64_t* index, std::int64_t rows, float mean, float inv_std, void* x,
                                    std::uint8_t kind, std::uint8_t* labels) {
  MPX_GRID_STRIDE(i, rows * pixels) {
    const std::int64_t b = i / pixels, p = i % pixels;
    const std::int64_t source = index[b];
    elements::store(x, i, kind, (static_cast<float>(images[source * pixels + p]) / 255.0f - mean) * inv_std);
    if (p == 0) labels[b] = all_labels[source];
  }
}

__global__ void increment_kernel(std::uint64_t* counter) { *counter += 1; }

__global__ void poison_kernel(void* data, bool wide, std::int64_t n, std::int64_t m, std::uint32_t bits) {
  MPX_GRID_STRIDE(k, m) {
    const std::int64_t i = k * n / m;
    if (wide) {
      static_cast<std::uint32_t*>(data)[i] = bits;
    } else {
      static_cast<std::uint16_t*>(data)[i] = static_cast<std::uint16_t>(bits);
    }
  }
}

}  // namespace

void max_pool_forward(DeviceContext& ctx, const void* x, DType dtype, std::int64_t n, std::int64_t h, std::int64_t w,
                      std::int64_t c, std::int64_t k, void* y) {
  const std::int64_t total = n * (h / k) * (w / k) * c;
  max_pool_forward_kernel<<<blocks_for(total), kThreads, 0, stream_of(ctx)>>>(x, kind_of(dtype), n, h, w, c, k, y);
  MPX_CUDA_CHECK_LAUNCH("max_pool_forward", total);
}

void max_pool_backward(DeviceContext& ctx, const void* x, const void* y, const void* dy, DType dtype, std::int64_t n,
                       std::int64_t h, std::int64_t w, std::int64_t c, std::int64_t k, void* dx) {
  if ((h % k) != 0 || (w % k) != 0) {  // rows/columns no window covers get no gradient
    MPX_CUDA_CHECK(cudaMemsetAsync(dx, 0, static_cast<std::size_t>(n * h * w * c) * size_bytes(dtype), stream_of(ctx)));
  }
  const std::int64_t total = n * (h / k) * (w / k) * c;
  max_pool_backward_kernel<<<blocks_for(total), kThreads, 0, stream_of(ctx)>>>(x, y, dy, kind_of(dtype), n, h, w, c, k, dx);
  MPX_CUDA_CHECK_LAUNCH("max_pool_backward", total);
}

void relu_backward(DeviceContext& ctx, const void* y, const void* dy, DType dtype, std::int64_t count, void* dx) {
  relu_backward_kernel<<<blocks_for(count), kThreads, 0, stream_of(ctx)>>>(y, dy, kind_of(dtype), count, dx);
  MPX_CUDA_CHECK_LAUNCH("relu_backward", count);
}

void dropout_forward(DeviceContext& ctx, const DropoutArgs& args, const std::uint64_t* device_step, const void* x,
                     DType dtype, std::int64_t count, void* y, std::uint8_t* keep) {
  if (!(args.probability >= 0.0f && args.probability < 1.0f)) throw InvalidArgument("dropout probability must be in [0, 1)");
  dropout_forward_kernel<<<blocks_for(count), kThreads, 0, stream_of(ctx)>>>(args, device_step, x, kind_of(dtype), count,
                                                                             y, keep);
  MPX_CUDA_CHECK_LAUNCH("dropout_forward", count);
}

void dropout_backward(DeviceContext& ctx, const DropoutArgs& args, const void* dy, const std::uint8_t* keep, DType dtype,
                      std::int64_t count, void* dx) {
  dropout_backward_kernel<<<blocks_for(count), kThreads, 0, stream_of(ctx)>>>(1.0f / (1.0f - args.probability), dy, keep,
                                                                              kind_of(dtype), count, dx);
  MPX_CUDA_CHECK_LAUNCH("dropout_backward", count);
}

void softmax_cross_entropy(DeviceContext& ctx, const float* logits, const std::uint8_t* labels, std::int64_t rows,
                           std::int64_t classes, const float* loss_scale, float* loss, int* correct, void* dlogits,
                           DType grad_dtype, float* workspace) {
  constexpr int kRowsPerBlock = kThreads / 32;
  auto* row_correct = reinterpret_cast<int*>(workspace + rows);
  const auto blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  softmax_cross_entropy_rows<<<blocks, kThreads, 0, stream_of(ctx)>>>(logits, labels, rows, classes, loss_scale, dlogits,
                                                                      kind_of(grad_dtype), workspace, row_correct);
  MPX_CUDA_CHECK_LAUNCH("softmax_cross_entropy", rows * classes);
  softmax_cross_entropy_total<<<1, kThreads, 0, stream_of(ctx)>>>(workspace, row_correct, rows, loss, correct);
  MPX_CUDA_CHECK_LAUNCH("softmax_cross_entropy/total", rows);
}

void gather_batch(DeviceContext& ctx, const std::uint8_t* images, const std::uint8_t* all_labels, std::int64_t pixels,
                  const std::int64_t* index, std::int64_t rows, float mean, float inv_std, void* x, DType dtype,
                  std::uint8_t* labels) {
  gather_batch_kernel<<<blocks_for(rows * pixels), kThreads, 0, stream_of(ctx)>>>(images, all_labels, pixels, index, rows,
                                                                                  mean, inv_std, x, kind_of(dtype), labels);
  MPX_CUDA_CHECK_LAUNCH("gather_batch", rows * pixels);
}

void increment(DeviceContext& ctx, std::uint64_t* counter) {
  increment_kernel<<<1, 1, 0, stream_of(ctx)>>>(counter);
  MPX_CUDA_CHECK_LAUNCH("increment", 1);
}

void poison(DeviceContext& ctx, void* data, DType dtype, std::int64_t n, std::int64_t count, std::uint32_t bits) {
  const std::int64_t m = std::min(count, n);
  if (m <= 0) return;
  const bool wide = kind_of(dtype) == elements::kF32;
  poison_kernel<<<blocks_for(m), kThreads, 0, stream_of(ctx)>>>(data, wide, n, m, bits);
  MPX_CUDA_CHECK_LAUNCH("poison", m);
}

}  // namespace mpx::cuda::kernels
