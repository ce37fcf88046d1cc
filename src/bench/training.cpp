#include "mpx/bench/training.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <vector>

#include "mpx/backend/cpu_backend.h"
#include "mpx/core/error.h"
#include "mpx/io/fashion_mnist.h"
#include "mpx/numeric/convert.h"
#include "mpx/nn/gpt.h"
#include "mpx/train/trainer.h"

namespace mpx::bench {

MatmulBenchResult run_matmul_benchmark(DType dtype, std::int64_t size, int repeats) {
  if (size < 1 || size > 16384) throw InvalidArgument("--size must be in 1..16384");
  if (repeats < 1) throw InvalidArgument("--repeats must be at least 1");
  if (dtype != DType::f32 && dtype != DType::bf16 && dtype != DType::f16) {
    throw InvalidArgument("--dtype must be f32, bf16 or f16");
  }
  const DType backend_dtype = dtype == DType::bf16 ? DType::bf16 : DType::f32;  // f16 widened exactly
  const auto count = static_cast<std::size_t>(size * size);
  std::vector<float> a(count), b(count), c(count);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (auto& x : a) x = normal(rng);
  for (auto& x : b) x = normal(rng);
  std::vector<std::uint16_t> a16(count), b16(count);
  if (backend_dtype == DType::bf16) {
    numeric::convert(a.data(), DType::f32, a16.data(), DType::bf16, count);
    numeric::convert(b.data(), DType::f32, b16.data(), DType::bf16, count);
  }
  const void* pa = backend_dtype == DType::bf16 ? static_cast<const void*>(a16.data()) : a.data();
  const void* pb = backend_dtype == DType::bf16 ? static_cast<const void*>(b16.data()) : b.data();

  backend::CpuBackend engine;
  std::vector<double> times;
  for (int r = -1; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    engine.matmul(pa, false, pb, false, backend_dtype, c.data(), size, size, size);
    if (r >= 0) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  MatmulBenchResult result;
  result.dtype = dtype;
  result.size = size;
  result.flops = 2.0 * static_cast<double>(size) * static_cast<double>(size) * static_cast<double>(size);
  result.engine_gflops = result.flops / times[times.size() / 2] / 1e9;
  result.direct_gflops = result.flops / backend::time_direct_onednn_matmul(size, size, size, backend_dtype, repeats) / 1e9;
  result.ratio = result.engine_gflops / result.direct_gflops;
  result.implementation = engine.last_implementation();
  return result;
}

MatmulRates measure_matmul_rates(std::int64_t size) {
  MatmulRates r;
  r.size = size;
  for (int trial = 0; trial < 3; ++trial) {
    r.f32_gflops = std::max(r.f32_gflops, run_matmul_benchmark(DType::f32, size, 5).engine_gflops);
    r.bf16_gflops = std::max(r.bf16_gflops, run_matmul_benchmark(DType::bf16, size, 5).engine_gflops);
  }
  return r;
}

namespace {
// Random images of Fashion-MNIST's shape: throughput does not depend on the pixels.
io::FashionMnist random_images() {
  io::FashionMnist data;
  for (io::ImageSet* set : {&data.train, &data.test}) {
    set->count = set == &data.train ? 60000 : 10000;
    set->pixels.resize(static_cast<std::size_t>(set->count * 28 * 28));
    set->labels.resize(static_cast<std::size_t>(set->count));
    std::mt19937 rng(3);
    for (auto& p : set->pixels) p = static_cast<std::uint8_t>(rng());
    for (auto& l : set->labels) l = static_cast<std::uint8_t>(rng() % 10);
  }
  return data;
}

// Random token ids for a GPT: throughput does not depend on the text either.
std::shared_ptr<const std::vector<std::int32_t>> random_tokens(std::int64_t count, std::int64_t vocabulary) {
  auto tokens = std::make_shared<std::vector<std::int32_t>>(static_cast<std::size_t>(count));
  std::mt19937 rng(4);
  for (auto& t : *tokens) t = static_cast<std::int32_t>(rng() % static_cast<std::uint32_t>(vocabulary));
  return tokens;
}
}  // namespace

TrainBenchResult run_train_benchmark(train::TrainConfig config, std::int64_t steps, const std::string& data_dir,
                                     bool profile) {
  if (steps < 2) throw InvalidArgument("--steps must be at least 2 (the first is a warm-up)");
  io::FashionMnist data;
  const std::optional<nn::GptConfig> gpt = train::gpt_config(config);
  const bool real = !gpt && std::filesystem::exists(data_dir);
  if (real) {
    data = io::load_fashion_mnist(data_dir);
  } else if (!gpt) {
    data = random_images();
  }
  config.epochs = 1000;
  // One trainer: the first kWarmupSteps steps plan buffers, create oneDNN primitives (per context) and
  // touch memory for the first time; the steady state after them is what is timed (and profiled).
  constexpr std::int64_t kWarmupSteps = 3;
  config.max_steps = kWarmupSteps + steps;
  config.test_subset = 1;
  std::unique_ptr<train::Trainer> made;
  if (gpt) {
    const std::int64_t windows = (kWarmupSteps + steps) * config.batch_size;
    const auto tokens = random_tokens(windows * gpt->block_size + 1, gpt->vocab_size);
    made = std::make_unique<train::Trainer>(config, std::make_unique<train::TokenWindows>(tokens, gpt->block_size, "bench"),
                                            std::make_unique<train::TokenWindows>(tokens, gpt->block_size, "bench", 1));
  } else {
    made = std::make_unique<train::Trainer>(config, data);
  }
  train::Trainer& trainer = *made;
  trainer.context().profile_layers = profile;
  std::int64_t last_step = 0;
  double warm_elapsed = 0, last_elapsed = 0;
  train::Callbacks callbacks;
  callbacks.on_step = [&](const train::StepReport& r) {
    if (r.step == kWarmupSteps) {
      warm_elapsed = r.elapsed_seconds;
      trainer.context().layer_times.clear();
    }
    last_step = r.step - kWarmupSteps;
    last_elapsed = r.elapsed_seconds - warm_elapsed;
  };
  trainer.run(callbacks);
  TrainBenchResult result;
  result.model = config.model;
  result.precision = trainer.config().precision;
  result.tf32 = trainer.config().tf32;
  result.steps = last_step;
  result.batch_size = config.batch_size;
  result.ms_per_step = last_elapsed / static_cast<double>(last_step) * 1e3;
  result.images_per_second = static_cast<double>(last_step * config.batch_size) / last_elapsed;
  if (gpt) {
    result.tokens_per_step = config.batch_size * gpt->block_size;
    result.tokens_per_second = result.images_per_second * static_cast<double>(gpt->block_size);
    result.flops_per_step = nn::gpt_training_flops_per_token(*gpt, gpt->block_size) * static_cast<double>(result.tokens_per_step);
    result.achieved_gflops = result.flops_per_step / (result.ms_per_step * 1e-3) / 1e9;
  }
  result.peak_bytes = trainer.peak_bytes();
  result.device = trainer.device_name();
  result.real_data = real;
  result.layer_times = trainer.context().layer_times;
  return result;
}

}  // namespace mpx::bench
