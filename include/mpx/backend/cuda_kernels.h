// The CUDA engine's own kernels for everything cuBLASLt does not do, each the device twin of a CPU layer
// (src/nn/) and tested against it. Activations are NHWC (or [rows, features]) of an f32, f16 or bf16
// `dtype`; statistics, parameters and their gradients are FP32. Every call is enqueued on the context's
// stream and needs no host synchronisation; scratch space is passed in (planned once, so that a captured
// CUDA graph never sees an allocation). Reductions go through per-block partials summed in a fixed
// order: results are deterministic run to run.
#pragma once

#include <cstddef>
#include <cstdint>

#include "mpx/backend/backend.h"  // ConvShape
#include "mpx/backend/cuda_context.h"
#include "mpx/numeric/dtype.h"

namespace mpx::cuda::kernels {

// Convolution as im2col + cuBLASLt GEMM: cols[rows, C*K*K] with rows = N*OH*OW and column c*K*K + kh*K + kw,
// so that OIHW weights are the GEMM's [O, C*K*K] operand as they are.
void im2col(DeviceContext& ctx, const backend::ConvShape& shape, const void* x, DType dtype, void* cols);
// dx[n, h, w, c] = sum of the FP32 column gradients that came from it (a gather: no atomics).
void col2im(DeviceContext& ctx, const backend::ConvShape& shape, const float* dcols, void* dx, DType dtype);

// Scratch floats the reductions below need for `rows` x `columns`.
std::size_t reduction_workspace_floats(std::int64_t rows, std::int64_t columns);
// out[c] = sum over rows of x[r, c] (bias gradients), accumulated in double.
void column_sums(DeviceContext& ctx, const void* x, DType dtype, std::int64_t rows, std::int64_t columns, float* out,
                 float* workspace);

struct BatchNormShape {
  std::int64_t rows = 0, channels = 0;  // rows = N*H*W
  float eps = 1e-5f, momentum = 0.1f;
  bool relu = false;                    // fused ReLU on the output
};
// Training: batch statistics (biased variance to normalise, unbiased into running_var, as PyTorch),
// mean and inv_std kept for backward. `update_running` false leaves the running statistics alone.
void batch_norm_forward_training(DeviceContext& ctx, const BatchNormShape& s, const void* x, DType dtype,
                                 const float* gamma, const float* beta, float* running_mean, float* running_var,
                                 bool update_running, float* mean, float* inv_std, float* workspace, void* y);
void batch_norm_forward_inference(DeviceContext& ctx, const BatchNormShape& s, const void* x, DType dtype,
                                  const float* gamma, const float* beta, const float* running_mean,
                                  const float* running_var, float* workspace, void* y);
// dgamma, dbeta overwritten; with the fused ReLU the gradient passes where the forward output was positive.
void batch_norm_backward(DeviceContext& ctx, const BatchNormShape& s, const void* x, const void* dy, DType dtype,
                         const float* gamma, const float* beta, const float* mean, const float* inv_std, float* workspace,
                         void* dx, float* dgamma, float* dbeta);

// LayerNorm over the last dimension (GPT-2's): statistics per row in double; mean and inv_std kept for
// backward. workspace: reduction_workspace_floats(rows, features) floats.
struct LayerNormShape {
  std::int64_t rows = 0, features = 0;
  float eps = 1e-5f;
};
void layer_norm_forward(DeviceContext& ctx, const LayerNormShape& s, const void* x, DType dtype, const float* gamma,
                        const float* beta, float* mean, float* inv_std, void* y);
void layer_norm_backward(DeviceContext& ctx, const LayerNormShape& s, const void* x, const void* dy, DType dtype,
                         const float* gamma, const float* mean, const float* inv_std, float* workspace, void* dx,
                         float* dgamma, float* dbeta);

// k x k max pooling with stride k, NHWC; a NaN wins, ties go to the first position (as the CPU layer).
void max_pool_forward(DeviceContext& ctx, const void* x, DType dtype, std::int64_t n, std::int64_t h, std::int64_t w,
                      std::int64_t c, std::int64_t k, void* y);
void max_pool_backward(DeviceContext& ctx, const void* x, const void* y, const void* dy, DType dtype, std::int64_t n,
                       std::int64_t h, std::int64_t w, std::int64_t c, std::int64_t k, void* dx);

// y = max(0, x); a NaN propagates.
void relu_forward(DeviceContext& ctx, const void* x, DType dtype, std::int64_t count, void* y);
// GELU, exact (erf) or the tanh approximation, evaluated in double as the CPU backend.
void gelu_forward(DeviceContext& ctx, const void* x, DType dtype, std::int64_t count, bool tanh_approximation, void* y);
void gelu_backward(DeviceContext& ctx, const void* x, const void* dy, DType dtype, std::int64_t count,
                   bool tanh_approximation, void* dx);
// sum = a + b (residual connections).
void add(DeviceContext& ctx, const void* a, const void* b, DType dtype, std::int64_t count, void* sum);
// dst = src between f32, f16 and bf16 (nearest-even, NaN kept: the CPU conversions' bits), on the stream.
void convert_elements(DeviceContext& ctx, const void* src, DType from, void* dst, DType to, std::int64_t count);
// Softmax + cross-entropy as the CPU backend computes it, one block per row (a GPT-2 row has 50,304
// classes): probabilities (FP32) and each row's loss (double, NaN for a label outside the classes); backward:
// grad = (p - onehot) * factor in `dtype`. Labels u8 (classes) or i32 (token ids): `label_dtype`.
void cross_entropy_forward(DeviceContext& ctx, const void* logits, DType dtype, const void* labels, DType label_dtype,
                           std::int64_t rows, std::int64_t classes, float* probabilities, double* row_loss);
void cross_entropy_backward(DeviceContext& ctx, const float* probabilities, const void* labels, DType label_dtype,
                            std::int64_t rows, std::int64_t classes, float factor, void* grad, DType dtype);
// Asynchronous zero fill and device-to-device copy on the stream (capturable).
void fill_zero(DeviceContext& ctx, void* data, std::size_t bytes);
void fill_bytes(DeviceContext& ctx, void* data, std::uint8_t value, std::size_t bytes);
void copy(DeviceContext& ctx, void* dst, const void* src, std::size_t bytes);

// dx = dy where y > 0 (y: the ReLU's output), else 0.
void relu_backward(DeviceContext& ctx, const void* y, const void* dy, DType dtype, std::int64_t count, void* dx);

// Inverted dropout with the CPU layer's mask: element i keeps when Philox(key, step * planned + offset + i) is
// at or above probability * 2^32, with key = seed ^ (stream * golden ratio). `step` is read on the device.
struct DropoutArgs {
  float probability = 0;
  std::uint64_t key = 0;
  std::uint64_t planned_elements = 0;  // elements of the planned (largest) batch; data parallel: the global one
  std::uint64_t element_offset = 0;    // data parallel: where this rank's rows begin in the global batch
};
void dropout_forward(DeviceContext& ctx, const DropoutArgs& args, const std::uint64_t* device_step, const void* x,
                     DType dtype, std::int64_t count, void* y, std::uint8_t* keep);
void dropout_backward(DeviceContext& ctx, const DropoutArgs& args, const void* dy, const std::uint8_t* keep, DType dtype,
                      std::int64_t count, void* dx);

// Mean softmax cross-entropy over `rows` FP32 logit rows, in FP32: loss (one float), the number of rows whose
// arg-max is the label (one int), and dlogits = (softmax - onehot) * loss_scale / rows in `grad_dtype`.
// loss_scale: one float on the device (the fused optimizer's), or null for 1. workspace: 2 * rows floats.
void softmax_cross_entropy(DeviceContext& ctx, const float* logits, const std::uint8_t* labels, std::int64_t rows,
                           std::int64_t classes, const float* loss_scale, float* loss, int* correct, void* dlogits,
                           DType grad_dtype, float* workspace);

// A training batch from a dataset kept on the device: x[b, p] = (images[index[b], p] - mean) / std in `dtype`,
// labels[b] = all_labels[index[b]].
void gather_batch(DeviceContext& ctx, const std::uint8_t* images, const std::uint8_t* all_labels, std::int64_t pixels,
                  const std::int64_t* index, std::int64_t rows, float mean, float inv_std, void* x, DType dtype,
                  std::uint8_t* labels);

// Data parallel: one gradient bucket made ready to send (backend::GradientBucket, the CPU backend's bits).
// Null pointers for the tensors a bucket does not have.
struct GradientBucketPointers {
  float* values = nullptr;
  float* reference = nullptr;
  const float* residual = nullptr;
  void* wire = nullptr;
  DType wire_dtype = DType::f16;
  float* next_residual = nullptr;
  std::uint8_t* nonfinite = nullptr;
};
void prepare_gradient_bucket(DeviceContext& ctx, const GradientBucketPointers& bucket, std::int64_t count, float weight);

// *counter += 1, on the stream (the step counter dropout reads inside a captured graph).
void increment(DeviceContext& ctx, std::uint64_t* counter);

// A non-finite drill (telemetry::NonFiniteInjector's, on the device): `bits` written into elements
// k * n / m of an n-element tensor, k < m = min(count, n). `bits`: the pattern in the dtype's width.
void poison(DeviceContext& ctx, void* data, DType dtype, std::int64_t n, std::int64_t count, std::uint32_t bits);

}  // namespace mpx::cuda::kernels
