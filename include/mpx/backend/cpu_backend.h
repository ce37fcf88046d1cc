// The CPU backend's compute primitives: matrix products and convolutions through oneDNN with FP32 or BF16
// inputs and FP32 accumulation, FP32 or BF16 output (BF16 only from BF16 inputs). (oneDNN 2.6 has no FP16 on the CPU: FP16 data is widened to
// FP32 exactly before it reaches these calls; on CPUs without AVX-512 it has no BF16 either, and BF16 operands
// are widened here, the BF16 result rounded once.) Primitives are created once per shape and cached.
// Only src/backend/cpu/ includes oneDNN's headers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "mpx/numeric/dtype.h"

namespace mpx::backend {

struct ConvShape {
  std::int64_t batch = 1, in_channels = 1, height = 1, width = 1;
  std::int64_t out_channels = 1, kernel = 3, stride = 1, padding = 1;
  constexpr std::int64_t out_height() const { return (height + 2 * padding - kernel) / stride + 1; }
  constexpr std::int64_t out_width() const { return (width + 2 * padding - kernel) / stride + 1; }
};

class CpuBackend {
 public:
  CpuBackend();
  ~CpuBackend();
  CpuBackend(const CpuBackend&) = delete;
  CpuBackend& operator=(const CpuBackend&) = delete;

  // C[m, n] = op(A) op(B) (+ bias[n]) (+ C when accumulate). A is [m, k] (or [k, m] transposed),
  // B is [k, n] (or [n, k] transposed), row-major, both of `input` dtype (f32 or bf16); C of `output` dtype
  // (f32, or bf16 when the input is bf16: the FP32 sums rounded once).
  void matmul(const void* a, bool transpose_a, const void* b, bool transpose_b, DType input, void* c,
              std::int64_t m, std::int64_t n, std::int64_t k, const float* bias = nullptr, bool accumulate = false,
              DType output = DType::f32);

  // NHWC activations, OIHW weights (PyTorch's layout); inputs of `input` dtype (f32 or bf16), activation
  // outputs (dst, diff_src) of `output` dtype (f32, or bf16 when the input is bf16); weight gradients FP32.
  void conv2d_forward(const ConvShape& shape, const void* src, const void* weights, DType input, const float* bias,
                      void* dst, DType output = DType::f32);
  void conv2d_backward_data(const ConvShape& shape, const void* diff_dst, const void* weights, DType input,
                            void* diff_src, DType output = DType::f32);
  void conv2d_backward_weights(const ConvShape& shape, const void* src, const void* diff_dst, DType input,
                               float* diff_weights, float* diff_bias);

  // oneDNN's name for the implementation it chose for the most recent primitive (for benchmarks/docs).
  std::string last_implementation() const;
  // Whether BF16 runs on oneDNN's BF16 kernels (AVX-512 CPUs) rather than widened to FP32 here.
  bool native_bf16() const;
  // Widens BF16 even where native kernels exist: tests run both paths on AVX-512 machines.
  void force_bf16_widening();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// For `mpx bench matmul`: the median seconds of C = A B (row-major, FP32 output) through a oneDNN matmul
// primitive created and executed directly, without CpuBackend's cache and wrappers.
double time_direct_onednn_matmul(std::int64_t m, std::int64_t n, std::int64_t k, DType input, int repeats);

}  // namespace mpx::backend
