// `mpx bench matmul` (CPU: engine vs oneDNN called directly; CUDA: cuBLASLt), `mpx bench optimizer` (the fused
// GPU optimizer step) and `mpx bench train` (img/s per precision).
#include <fmt/format.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "layer_times.h"
#include "validators.h"
#include "mpx/bench/gpu.h"
#include "mpx/bench/training.h"
#include "mpx/core/error.h"
#include "mpx/io/fashion_mnist.h"

namespace mpx::cli {

namespace {

struct MatmulOptions {
  std::string device = "cpu";
  bool tf32 = false;
  std::string dtype = "bf16";
  std::int64_t size = 2048;
  int repeats = 10;
  bool json = false;
};

struct TrainBenchOptions {
  std::string model = "cnn";
  std::vector<std::string> precisions = {"32-true", "bf16-mixed", "16-mixed"};
  std::int64_t steps = 50;
  int batch_size = 128;
  std::string data = io::kFashionMnistDefaultDir;
  int rounds = 1;
  bool json = false;
  bool profile = false;
  int numerics_every = train::TrainConfig{}.numerics_every;
  std::string device = "cpu";
  bool tf32 = false;
};

void run_gpu_matmul(const MatmulOptions& o) {
  const auto r = bench::run_gpu_matmul_benchmark(parse_dtype(o.dtype), o.size, o.repeats, o.tf32);
  if (o.json) {
    fmt::print("{}\n", nlohmann::json{{"device", r.device}, {"dtype", name(r.dtype)}, {"size", r.size}, {"tf32", r.tf32},
                                      {"flops", r.flops}, {"ms", r.seconds * 1e3}, {"tflops", r.tflops}}
                           .dump(2));
    return;
  }
  fmt::print("matmul {}^3 {}{} on {}: {:.3f} ms, {:.1f} TFLOP/s (cuBLASLt)\n", r.size, name(r.dtype), r.tf32 ? " (TF32)" : "",
             r.device, r.seconds * 1e3, r.tflops);
}

void run_matmul(const MatmulOptions& o) {
  if (o.device == "cuda") return run_gpu_matmul(o);
  if (o.tf32) throw InvalidArgument("--tf32 applies to --device cuda only");
  const auto r = bench::run_matmul_benchmark(parse_dtype(o.dtype), o.size, o.repeats);
  if (o.json) {
    fmt::print("{}\n", nlohmann::json{{"dtype", name(r.dtype)}, {"size", r.size}, {"flops", r.flops},
                                      {"engine_gflops", r.engine_gflops}, {"direct_gflops", r.direct_gflops},
                                      {"ratio", r.ratio}, {"implementation", r.implementation}}
                           .dump(2));
    return;
  }
  fmt::print("matmul {}^3 {}: engine {:.1f} GFLOP/s, oneDNN direct {:.1f} GFLOP/s, ratio {:.2f} ({})\n", r.size,
             name(r.dtype), r.engine_gflops, r.direct_gflops, r.ratio, r.implementation);
}

struct OptimizerBenchOptions {
  std::string grad_dtype = "f16", working_dtype = "bf16";
  int steps = 50;
  bool json = false;
};

void run_optimizer_bench(const OptimizerBenchOptions& o) {
  const auto r = bench::run_fused_optimizer_benchmark(parse_dtype(o.grad_dtype), parse_dtype(o.working_dtype), o.steps);
  if (o.json) {
    fmt::print("{}\n", nlohmann::json{{"device", r.device}, {"parameters", r.parameters}, {"tensors", r.tensors},
                                      {"grad_dtype", name(r.grad_dtype)}, {"working_dtype", name(r.working_dtype)},
                                      {"ms_per_step", r.ms_per_step}, {"bytes_per_parameter", r.bytes_per_parameter},
                                      {"gbps", r.gbps}}
                           .dump(2));
    return;
  }
  fmt::print("fused AdamW step, {} parameters in {} tensors ({} grads, {} copy) on {}: {:.3f} ms, {:.0f} GB/s\n",
             r.parameters, r.tensors, name(r.grad_dtype), name(r.working_dtype), r.device, r.ms_per_step, r.gbps);
}

// With several rounds the precisions run interleaved (A B A B ...) and the round with the median img/s
// is reported for each: a shared machine's drifting speed then affects every precision alike.
void run_train_bench(const TrainBenchOptions& o) {
  std::vector<std::vector<bench::TrainBenchResult>> runs(o.precisions.size());
  for (int round = 0; round < o.rounds; ++round) {
    for (std::size_t i = 0; i < o.precisions.size(); ++i) {
      train::TrainConfig config;
      config.model = o.model;
      config.precision = o.precisions[i];
      config.batch_size = o.batch_size;
      config.numerics_every = o.numerics_every;
      config.device = train::parse_device(o.device);
      config.tf32 = o.tf32;
      runs[i].push_back(bench::run_train_benchmark(config, o.steps, o.data, o.profile));
    }
  }
  std::vector<bench::TrainBenchResult> medians;
  for (auto& r : runs) {
    std::sort(r.begin(), r.end(), [](const auto& a, const auto& b) { return a.images_per_second < b.images_per_second; });
    medians.push_back(r[r.size() / 2]);
  }
  double fp32_images_per_second = 0;
  for (const auto& r : medians) {
    if (r.precision == "32-true") fp32_images_per_second = r.images_per_second;
  }
  nlohmann::json all = nlohmann::json::array();
  for (const auto& r : medians) {
    const double speedup = fp32_images_per_second > 0 ? r.images_per_second / fp32_images_per_second : 0;
    const nlohmann::json layers = layer_times_json(r.layer_times);
    if (o.json) {
      all.push_back({{"model", r.model}, {"precision", r.precision}, {"device", r.device}, {"steps", r.steps},
                     {"batch_size", r.batch_size}, {"rounds", o.rounds}, {"images_per_second", r.images_per_second},
                     {"ms_per_step", r.ms_per_step}, {"peak_bytes", r.peak_bytes}, {"real_data", r.real_data},
                     {"tf32", r.tf32}});
      if (speedup > 0) all.back()["speedup_vs_32_true"] = speedup;
      if (o.profile) all.back()["layers"] = layers;
    } else {
      fmt::print("{} {:<11} {:>8.0f} img/s {:>8.2f} ms/step  peak {:.1f} MiB{}{}\n", r.model,
                 r.precision + (r.tf32 ? "+tf32" : ""),
                 r.images_per_second, r.ms_per_step, static_cast<double>(r.peak_bytes) / (1 << 20),
                 speedup > 0 ? fmt::format("  {:.2f}x 32-true", speedup) : "",
                 r.real_data ? "" : " (random images: Fashion-MNIST not installed)");
      print_layer_times(layers, 4, 10);
    }
  }
  if (o.json) fmt::print("{}\n", all.dump(2));
}

}  // namespace

void add_bench_training_commands(CLI::App& bench) {
  auto m = std::make_shared<MatmulOptions>();
  CLI::App* matmul = bench.add_subcommand("matmul", "GFLOP/s of an n^3 product through the engine and through oneDNN directly");
  matmul->add_option("--device", m->device, "cpu (oneDNN) or cuda (cuBLASLt)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  matmul->add_flag("--tf32", m->tf32, "FP32 inputs through TF32 tensor cores (cuda only)");
  matmul->add_option("--dtype", m->dtype, "f32, bf16 or f16 (f16 is widened to f32 on the CPU)")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}))
      ->capture_default_str();
  matmul->add_option("--size", m->size, "n")->check(CLI::Range(1, 16384))->capture_default_str();
  matmul->add_option("--repeats", m->repeats, "Timed runs; the median is reported")->check(positive())->capture_default_str();
  matmul->add_flag("--json", m->json, "Print JSON");
  matmul->callback([m] { run_matmul(*m); });

  auto opt = std::make_shared<OptimizerBenchOptions>();
  CLI::App* optimizer = bench.add_subcommand(
      "optimizer", "The fused mixed-precision AdamW step on GPT-2 124M's parameters (CUDA): ms/step and GB/s");
  optimizer->add_option("--grad-dtype", opt->grad_dtype, "Gradient dtype")->check(CLI::IsMember({"f32", "f16", "bf16"}))->capture_default_str();
  optimizer->add_option("--working-dtype", opt->working_dtype, "Working copy dtype")->check(CLI::IsMember({"f16", "bf16"}))->capture_default_str();
  optimizer->add_option("--steps", opt->steps, "Timed steps")->check(CLI::Range(1, 100000))->capture_default_str();
  optimizer->add_flag("--json", opt->json, "Print JSON");
  optimizer->callback([opt] { run_optimizer_bench(*opt); });

  auto t = std::make_shared<TrainBenchOptions>();
  CLI::App* train = bench.add_subcommand("train", "Training throughput (img/s, ms/step, peak bytes) per precision");
  train->add_option("--model", t->model, "cnn or mlp")->check(CLI::IsMember({"cnn", "mlp"}))->capture_default_str();
  train->add_option("--precision", t->precisions, "One or more precisions")->capture_default_str();
  train->add_option("--steps", t->steps, "Timed steps (after one warm-up step)")->check(CLI::Range(2, 1000000))->capture_default_str();
  train->add_option("--batch-size", t->batch_size, "Images per step")->check(CLI::Range(1, 65536))->capture_default_str();
  train->add_option("--data", t->data, "Fashion-MNIST directory (random images when absent)")->capture_default_str();
  train->add_option("--rounds", t->rounds, "Runs of each precision, interleaved; the median is reported")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  train->add_flag("--json", t->json, "Print JSON");
  train->add_option("--device", t->device, "cpu, cuda or auto")->check(CLI::IsMember({"cpu", "cuda", "auto"}))->capture_default_str();
  train->add_flag("--tf32", t->tf32, "As mpx train --tf32: FP32 products through TF32 tensor cores (CUDA)");
  train->add_flag("--profile", t->profile, "Also time every layer's forward and backward (mean per step)");
  train->add_option("--numerics-every", t->numerics_every, "Steps between numerics samples, as mpx train (0: off)")
      ->check(non_negative())
      ->capture_default_str();
  train->callback([t] { run_train_bench(*t); });
}

}  // namespace mpx::cli
