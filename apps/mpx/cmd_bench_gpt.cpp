// `mpx bench gpt`: GPT training throughput per precision on this machine: ms/step, tokens/s, the model's
// FLOP rate against the machine's measured matmul rate (model FLOPs utilisation), the GEMM floor (model
// FLOPs / that rate), peak bytes. The matmul rate is measured in the same call (oneDNN on the CPU, cuBLASLt
// with --device cuda), so the
// figures compare within one run on one machine.
#include <fmt/format.h>

#include <algorithm>
#include <map>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "layer_times.h"
#include "validators.h"
#include "mpx/bench/gpu.h"
#include "mpx/bench/training.h"
#include "mpx/core/error.h"
#include "mpx/nn/gpt.h"

namespace mpx::cli {

namespace {

struct GptBenchOptions {
  std::string model = "gpt-tiny";
  std::vector<std::string> precisions = {"32-true", "bf16-mixed", "16-mixed"};
  std::int64_t steps = 20;
  int batch_size = 12;
  std::int64_t block_size = 0;
  int rounds = 1;
  std::int64_t peak_size = 1024;
  bool json = false, profile = false;
  std::string device = "cpu";
};

// What a precision's products run in: BF16 for the bf16 presets; FP16 for the 16 ones on CUDA (the CPU
// multiplies FP16 values as FP32); FP32 otherwise.
DType product_dtype(const std::string& precision, bool cuda) {
  if (precision.find("bf16") != std::string::npos) return DType::bf16;
  return cuda && precision.rfind("16-", 0) == 0 ? DType::f16 : DType::f32;
}

// The yardstick of model FLOPs utilisation, in GFLOP/s per product dtype: oneDNN on the CPU, cuBLASLt on
// the GPU (n^3, measured in this call).
std::map<DType, double> matmul_peaks(bool cuda, std::int64_t size) {
  if (!cuda) {
    const bench::MatmulRates rates = bench::measure_matmul_rates(size);
    return {{DType::f32, rates.f32_gflops}, {DType::bf16, rates.bf16_gflops}};
  }
  std::map<DType, double> peaks;
  for (DType t : {DType::f32, DType::bf16, DType::f16}) {
    peaks[t] = bench::run_gpu_matmul_benchmark(t, size, 20, /*allow_tf32=*/false).tflops * 1e3;
  }
  return peaks;
}

void run_gpt_bench(const GptBenchOptions& o) {
  // The machine's matmul rates first: the yardstick for model FLOPs utilisation.
  const bool cuda = o.device == "cuda";
  std::map<DType, double> peak_gflops = matmul_peaks(cuda, o.peak_size);
  const bool bf16_slower = peak_gflops[DType::bf16] < peak_gflops[DType::f32];
  std::vector<std::vector<bench::TrainBenchResult>> runs(o.precisions.size());
  for (int round = 0; round < o.rounds; ++round) {
    for (std::size_t i = 0; i < o.precisions.size(); ++i) {
      train::TrainConfig config;
      config.model = o.model;
      config.precision = o.precisions[i];
      config.device = train::parse_device(o.device);
      config.batch_size = o.batch_size;
      config.block_size = o.block_size;
      config.numerics_every = 0;
      config.schedule = train::ScheduleKind::constant;
      runs[i].push_back(bench::run_train_benchmark(config, o.steps, "", o.profile));
    }
  }
  nlohmann::json all = {{"model", o.model}, {"batch_size", o.batch_size}, {"rounds", o.rounds},
                        {"matmul_gflops", {{"f32", peak_gflops[DType::f32]}, {"bf16", peak_gflops[DType::bf16]}}},
                        {"matmul_library", cuda ? "cuBLASLt" : "oneDNN"},
                        {"matmul_size", o.peak_size}, {"bf16_matmul_slower_than_f32", bf16_slower},
                        {"results", nlohmann::json::array()}};
  if (!o.json) {
    fmt::print("{} batch {}: matmul {}^3 f32 {:.0f} GFLOP/s, bf16 {:.0f} GFLOP/s{}\n", o.model, o.batch_size, o.peak_size,
               peak_gflops[DType::f32], peak_gflops[DType::bf16],
               bf16_slower && !cuda ? fmt::format(" ({})", bench::kBf16SlowerNote) : "");
  }
  for (auto& r : runs) {
    std::sort(r.begin(), r.end(), [](const auto& a, const auto& b) { return a.ms_per_step < b.ms_per_step; });
    const bench::TrainBenchResult& m = r[r.size() / 2];
    const double peak = peak_gflops[product_dtype(m.precision, cuda)];
    const double floor_ms = m.flops_per_step / (peak * 1e9) * 1e3;
    const double mfu = m.achieved_gflops / peak;
    const nlohmann::json layers = layer_times_json(m.layer_times);
    all["results"].push_back({{"precision", m.precision}, {"ms_per_step", m.ms_per_step},
                              {"tokens_per_second", m.tokens_per_second}, {"tokens_per_step", m.tokens_per_step},
                              {"model_flops_per_step", m.flops_per_step}, {"achieved_gflops", m.achieved_gflops},
                              {"mfu", mfu}, {"gemm_floor_ms", floor_ms}, {"peak_bytes", m.peak_bytes},
                              {"device", m.device}, {"steps", m.steps}});
    if (o.profile) all["results"].back()["layers"] = layers;
    if (!o.json) {
      fmt::print("  {:<11} {:>8.1f} ms/step {:>8.0f} tok/s  {:>6.1f} GFLOP/s  MFU {:>5.1f}%  GEMM floor {:.1f} ms  peak {:.1f} MiB\n",
                 m.precision, m.ms_per_step, m.tokens_per_second, m.achieved_gflops, 100 * mfu, floor_ms,
                 static_cast<double>(m.peak_bytes) / (1 << 20));
      print_layer_times(layers, 6, 28);
    }
  }
  if (cuda) all["matmul_gflops"]["f16"] = peak_gflops[DType::f16];
  if (o.json) fmt::print("{}\n", all.dump(2));
}

}  // namespace

void add_bench_gpt_command(CLI::App& bench) {
  auto o = std::make_shared<GptBenchOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "gpt", "GPT training throughput per precision: ms/step, tokens/s, model FLOP/s against the measured matmul rate");
  cmd->add_option("--model", o->model, "gpt-tiny, gpt-char or gpt2")
      ->check(CLI::IsMember({"gpt-tiny", "gpt-char", "gpt2"}))
      ->capture_default_str();
  cmd->add_option("--precision", o->precisions, "One or more precisions")->capture_default_str();
  cmd->add_option("--steps", o->steps, "Timed steps (after three warm-up steps)")->check(CLI::Range(2, 100000))->capture_default_str();
  cmd->add_option("--batch-size", o->batch_size, "Sequences per step")->check(CLI::Range(1, 65536))->capture_default_str();
  cmd->add_option("--block-size", o->block_size, "Tokens per sequence (default: the preset's)")->check(positive());
  cmd->add_option("--rounds", o->rounds, "Runs of each precision, interleaved; the median is reported")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  cmd->add_option("--peak-size", o->peak_size, "n of the n^3 matmul that measures the machine's rate")
      ->check(CLI::Range(64, 8192))
      ->capture_default_str();
  cmd->add_option("--device", o->device, "cpu, or cuda (the yardstick is then cuBLASLt's n^3 rate)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_flag("--profile", o->profile, "Also time every layer's forward and backward (mean per step)");
  cmd->add_flag("--json", o->json, "Print JSON");
  cmd->callback([o] { run_gpt_bench(*o); });
}

}  // namespace mpx::cli
