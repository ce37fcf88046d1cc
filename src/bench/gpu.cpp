#include "mpx/bench/gpu.h"

#include <chrono>
#include <random>
#include <vector>

#include "mpx/backend/cuda_context.h"
#include "mpx/backend/cuda_fused_optimizer.h"
#include "mpx/backend/cuda_matmul.h"
#include "mpx/core/error.h"
#include "mpx/numeric/convert.h"

namespace mpx::bench {

namespace {

// GPT-2 124M's trainable tensors (tied embedding), padded to the 124,475,904 parameters of the PyTorch
// reference (../shared/tools/torch_reference.py optim) so that both move the same bytes.
std::vector<std::size_t> gpt2_parameter_sizes() {
  constexpr std::size_t d = 768, vocab = 50257, context = 1024, layers = 12;
  std::vector<std::size_t> sizes = {vocab * d, context * d};
  for (std::size_t l = 0; l < layers; ++l) {
    for (std::size_t s : {d, d, d * 3 * d, 3 * d, d * d, d, d, d, d * 4 * d, 4 * d, 4 * d * d, d}) sizes.push_back(s);
  }
  sizes.push_back(d);
  sizes.push_back(d);
  std::size_t total = 0;
  for (std::size_t s : sizes) total += s;
  constexpr std::size_t kReferenceParameters = 124'475'904;
  if (total < kReferenceParameters) sizes.push_back(kReferenceParameters - total);
  return sizes;
}

}  // namespace

GpuMatmulResult run_gpu_matmul_benchmark(DType dtype, std::int64_t size, int repeats, bool allow_tf32) {
  if (size < 1 || size > 32768) throw InvalidArgument("--size must be in 1..32768");
  if (repeats < 1) throw InvalidArgument("--repeats must be at least 1");
  cuda::DeviceContext context;
  GpuMatmulResult r;
  r.device = context.name();
  r.dtype = dtype;
  r.size = size;
  r.tf32 = allow_tf32 && dtype == DType::f32;
  r.flops = 2.0 * static_cast<double>(size) * static_cast<double>(size) * static_cast<double>(size);
  r.seconds = cuda::time_matmul(context, size, size, size, dtype, allow_tf32, repeats);
  r.tflops = r.flops / r.seconds * 1e-12;
  return r;
}

FusedOptimizerResult run_fused_optimizer_benchmark(DType grad_dtype, DType working_dtype, int steps) {
  if (steps < 1) throw InvalidArgument("--steps must be at least 1");
  if (grad_dtype != DType::f32 && grad_dtype != DType::f16 && grad_dtype != DType::bf16) {
    throw InvalidArgument("--grad-dtype must be f32, f16 or bf16");
  }
  if (working_dtype != DType::f16 && working_dtype != DType::bf16) throw InvalidArgument("--working-dtype must be f16 or bf16");
  cuda::DeviceContext context;
  const auto sizes = gpt2_parameter_sizes();
  std::size_t largest = 0, total = 0;
  for (std::size_t s : sizes) {
    largest = std::max(largest, s);
    total += s;
  }
  // One host pattern, uploaded into every tensor: N(0, 1) weights and gradients of about 1e-3 times the scale.
  std::vector<float> values(largest), grads(largest);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (float& v : values) v = normal(rng);
  for (float& g : grads) g = normal(rng) * 1e-3f * 1024.0f;
  std::vector<unsigned char> grad_bytes(largest * size_bytes(grad_dtype));
  numeric::convert(grads.data(), DType::f32, grad_bytes.data(), grad_dtype, largest);
  const std::vector<float> zeros(largest, 0.0f);

  auto& pool = context.pool();
  std::vector<std::shared_ptr<void>> blocks;
  std::vector<cuda::DeviceParameter> params;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const std::size_t n = sizes[i];
    auto master = pool.allocate(n * 4, MemoryCategory::master_weights);
    auto grad = pool.allocate(n * size_bytes(grad_dtype), MemoryCategory::gradients);
    auto m1 = pool.allocate(n * 4, MemoryCategory::optimizer_state);
    auto m2 = pool.allocate(n * 4, MemoryCategory::optimizer_state);
    auto working = pool.allocate(n * 2, MemoryCategory::weights);
    context.upload(master.get(), values.data(), n * 4);
    context.upload(grad.get(), grad_bytes.data(), n * size_bytes(grad_dtype));
    context.upload(m1.get(), zeros.data(), n * 4);
    context.upload(m2.get(), zeros.data(), n * 4);
    params.push_back({static_cast<float*>(master.get()), grad.get(), grad_dtype, static_cast<float*>(m1.get()),
                      static_cast<float*>(m2.get()), working.get(), working_dtype, n, i % 12 > 1});
    for (auto* b : {&master, &grad, &m1, &m2, &working}) blocks.push_back(std::move(*b));
  }
  cuda::FusedStepConfig config;
  config.loss_scaling = true;
  config.scaler.init_scale = 1024.0f;  // as the reference's GradScaler
  config.clip_norm = 1.0;
  cuda::FusedOptimizer optimizer(context, config, params);
  for (int i = 0; i < 3; ++i) optimizer.step(1e-4f);  // warm-up
  context.synchronize();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) optimizer.step(1e-4f);
  context.synchronize();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!optimizer.record().applied) throw Error("optimizer benchmark: the timed steps were skipped (non-finite gradients)");

  FusedOptimizerResult r;
  r.device = context.name();
  r.parameters = static_cast<std::int64_t>(total);
  r.tensors = static_cast<std::int64_t>(sizes.size());
  r.grad_dtype = grad_dtype;
  r.working_dtype = working_dtype;
  r.ms_per_step = seconds / steps * 1e3;
  r.bytes_per_parameter = 2.0 * static_cast<double>(size_bytes(grad_dtype)) + 4 * 6 + static_cast<double>(size_bytes(working_dtype));
  r.gbps = r.bytes_per_parameter * static_cast<double>(total) / (seconds / steps) * 1e-9;
  return r;
}

}  // namespace mpx::bench
