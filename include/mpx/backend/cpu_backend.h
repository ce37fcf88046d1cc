// The CPU backend: matrix products and convolutions through oneDNN with FP32 or BF16 inputs and FP32
// accumulation, FP32 or BF16 output (BF16 only from BF16 inputs); every other op as vectorised loops with
// FP32 arithmetic on FP32 or BF16 storage, OpenMP over rows. oneDNN 2.6 has no FP16 on the CPU: FP16 data
// is rounded and held as FP32 (activation_dtype/operand_dtype say so); on CPUs without AVX-512 it has no
// BF16 either, and BF16 operands are widened here, the BF16 result rounded once. Primitives are created
// once per shape and cached. Only src/backend/cpu/ includes oneDNN's headers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "mpx/backend/backend.h"
#include "mpx/numeric/dtype.h"

namespace mpx::backend {

class CpuBackend final : public Backend {
 public:
  CpuBackend();
  ~CpuBackend() override;

  Device device() const override { return Device::cpu; }
  std::string device_name() const override { return "cpu"; }
  bool supports(Op op, DType dtype) const override;
  bool can_capture() const override { return false; }

  Tensor allocate(const Shape& shape, DType dtype, MemoryCategory category) override;
  const MemoryTracker& memory() const override { return memory_; }
  void fill_zero(const Tensor& t) override { t.fill_zero(); }
  void upload(const Tensor& t, const void* host) override;
  void download(const Tensor& t, void* host) override;
  void synchronize() override {}

  DType activation_dtype(DType policy_activations) const override;
  DType operand_dtype(DType compute) const override;
  DType product_output_dtype(DType compute, DType stored) const override;
  void round_for_compute(const Tensor& src, const Tensor& dst, DType compute) override;
  void convert(const Tensor& src, const Tensor& dst) override;

  void matmul(const void* a, bool transpose_a, const void* b, bool transpose_b, DType input, void* c,
              std::int64_t m, std::int64_t n, std::int64_t k, const float* bias = nullptr, bool accumulate = false,
              DType output = DType::f32) override;
  void conv2d_forward(const ConvShape& shape, const void* src, const void* weights, DType input, const float* bias,
                      void* dst, DType output = DType::f32) override;
  void conv2d_backward_data(const ConvShape& shape, const void* diff_dst, const void* weights, DType input,
                            void* diff_src, DType output = DType::f32) override;
  void conv2d_backward_weights(const ConvShape& shape, const void* src, const void* diff_dst, DType input,
                               float* diff_weights, float* diff_bias) override;

  void relu_forward(const Tensor& x, const Tensor& y) override;
  void relu_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) override;
  void gelu_forward(const Tensor& x, const Tensor& y, bool tanh_approximation) override;
  void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool tanh_approximation) override;
  void add(const Tensor& a, const Tensor& b, const Tensor& sum) override;
  void dropout_forward(const Tensor& x, const DropoutArgs& args, const Tensor& keep, const Tensor& y) override;
  void dropout_backward(const Tensor& dy, const Tensor& keep, float probability, const Tensor& dx) override;
  void max_pool_forward(const Tensor& x, std::int64_t kernel, const Tensor& y) override;
  void max_pool_backward(const Tensor& x, const Tensor& y, const Tensor& dy, std::int64_t kernel,
                         const Tensor& dx) override;
  void batch_norm_forward(const Tensor& x, const BatchNormArgs& args, const BatchNormState& state,
                          const Tensor& y) override;
  void batch_norm_backward(const Tensor& x, const Tensor& dy, const BatchNormArgs& args, const BatchNormState& state,
                           const Tensor& dx, const Tensor& dgamma, const Tensor& dbeta) override;
  void layer_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, const Tensor& mean,
                          const Tensor& inv_std, const Tensor& y) override;
  void layer_norm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& mean,
                           const Tensor& inv_std, const Tensor& dx, const Tensor& dgamma,
                           const Tensor& dbeta) override;
  void embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& y) override;
  void embedding_backward(const Tensor& ids, const Tensor& dy, const Tensor& dtable, bool accumulate) override;
  void attention_forward(const Tensor& qkv, std::int64_t heads, const Tensor& row_logsumexp,
                         const Tensor& y) override;
  void attention_backward(const Tensor& qkv, const Tensor& row_logsumexp, const Tensor& dy, std::int64_t heads,
                          const Tensor& dqkv) override;
  void attention_step(const Tensor& qkv, std::int64_t heads, std::int64_t position, const Tensor& k_cache,
                      const Tensor& v_cache, const Tensor& y) override;
  float cross_entropy_forward(const Tensor& logits, const Tensor& labels, const Tensor& probabilities) override;
  void cross_entropy_backward(const Tensor& probabilities, const Tensor& labels, float scale,
                              const Tensor& grad) override;
  void column_sums(const Tensor& x, const Tensor& out) override;
  void prepare_gradient_bucket(const GradientBucket& bucket, float weight) override;
  std::unique_ptr<OptimizerStep> make_optimizer(const OptimizerSettings& settings,
                                                std::vector<ParameterTensors> parameters) override;

  // oneDNN's name for the implementation it chose for the most recent primitive (for benchmarks/docs).
  std::string last_implementation() const;
  // Whether BF16 runs on oneDNN's BF16 kernels (AVX-512 CPUs) rather than widened to FP32 here.
  bool native_bf16() const;
  // Widens BF16 even where native kernels exist: tests run both paths on AVX-512 machines.
  void force_bf16_widening();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  MemoryTracker memory_;
};

// For `mpx bench matmul`: the median seconds of C = A B (row-major, FP32 output) through a oneDNN matmul
// primitive created and executed directly, without CpuBackend's cache and wrappers.
double time_direct_onednn_matmul(std::int64_t m, std::int64_t n, std::int64_t k, DType input, int repeats);

}  // namespace mpx::backend
