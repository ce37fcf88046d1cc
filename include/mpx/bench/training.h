// Benchmarks behind `mpx bench matmul` (GFLOP/s through the engine beside oneDNN called directly) and
// `mpx bench train` (training throughput of the Fashion-MNIST models per precision).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mpx/nn/layer.h"
#include "mpx/train/trainer.h"
#include "mpx/numeric/dtype.h"

namespace mpx::bench {

struct MatmulBenchResult {
  DType dtype = DType::f32;
  std::int64_t size = 0;
  double flops = 0;  // 2 n^3
  double engine_gflops = 0, direct_gflops = 0, ratio = 0;
  std::string implementation;
};

// A square product n x n x n, FP32 output, inputs f32 or bf16 (f16 is widened to f32 on the CPU).
MatmulBenchResult run_matmul_benchmark(DType dtype, std::int64_t size, int repeats);

// What this machine's products can do in FP32 and BF16 (n^3, the best of three medians of five: a shared
// machine's neighbours only ever slow it down). On CPUs without AMX BF16 can be the slower one.
struct MatmulRates {
  std::int64_t size = 0;
  double f32_gflops = 0, bf16_gflops = 0;
  bool bf16_slower() const { return bf16_gflops < f32_gflops; }
};
MatmulRates measure_matmul_rates(std::int64_t size);
// The sentence `mpx info --measure` and `mpx bench gpt` print when BF16 products are the slower ones.
inline constexpr const char* kBf16SlowerNote =
    "BF16 products are slower than FP32 on this CPU: mixed precision buys memory and bandwidth here, not matmul speed";

struct TrainBenchResult {
  std::string model, precision, device;
  bool tf32 = false;  // FP32 products through TF32 (CUDA, when asked)
  std::int64_t steps = 0, batch_size = 0;
  double images_per_second = 0, ms_per_step = 0;
  std::size_t peak_bytes = 0;
  bool real_data = false;  // Fashion-MNIST was installed; else random images of the same shape (GPT: random tokens)
  // GPT models: tokens per step and per second, the model's training FLOPs per step (6 x parameters x tokens
  // + attention) and the rate they were done at.
  std::int64_t tokens_per_step = 0;
  double tokens_per_second = 0, flops_per_step = 0, achieved_gflops = 0;
  std::vector<nn::LayerTime> layer_times;  // when profiling: forward/backward seconds per layer
};

// Trains with `config` (model, precision, batch size, device, numerics interval, TF32...; its epochs,
// step limit and test subset are set here) for three warm-up steps and then `steps` timed ones.
TrainBenchResult run_train_benchmark(train::TrainConfig config, std::int64_t steps, const std::string& data_dir,
                                     bool profile = false);

}  // namespace mpx::bench
