// GPU benchmarks behind `mpx bench matmul --device cuda` (cuBLASLt GEMM TFLOP/s) and
// `mpx bench optimizer` (the fused mixed-precision optimizer step on GPT-2 124M's parameter tensors).
// Both throw NotAvailable with the reason when there is no device.
#pragma once

#include <cstdint>
#include <string>

#include "mpx/numeric/dtype.h"

namespace mpx::bench {

struct GpuMatmulResult {
  std::string device;
  DType dtype = DType::bf16;
  std::int64_t size = 0;
  bool tf32 = false;
  double flops = 0;  // 2 n^3
  double seconds = 0, tflops = 0;
};
GpuMatmulResult run_gpu_matmul_benchmark(DType dtype, std::int64_t size, int repeats, bool allow_tf32);

struct FusedOptimizerResult {
  std::string device;
  std::int64_t parameters = 0, tensors = 0;
  DType grad_dtype = DType::f16, working_dtype = DType::bf16;
  double ms_per_step = 0;
  double bytes_per_parameter = 0;  // moved by the step: grads read twice, master and moments read and written, copy written
  double gbps = 0;                 // bytes moved / time
};
// AdamW with FP32 master weights and moments, dynamic loss scaling and global-norm clipping at 1.0.
FusedOptimizerResult run_fused_optimizer_benchmark(DType grad_dtype, DType working_dtype, int steps);

}  // namespace mpx::bench
