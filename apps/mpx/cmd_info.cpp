// `mpx info`: version, build options, CPU features and conversion paths, CUDA devices.
#include <omp.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "mpx/backend/cpu_backend.h"
#include "mpx/bench/training.h"
#include "mpx/backend/cuda.h"
#include "mpx/build_info.h"
#include "mpx/core/cpu_features.h"
#include "mpx/numeric/convert.h"

namespace mpx::cli {

namespace {

struct InfoOptions {
  bool json = false;
  bool measure = false;  // also time FP32 and BF16 products (about a second)
};

std::string gib(std::size_t bytes) { return fmt::format("{:.1f} GiB", static_cast<double>(bytes) / (1ull << 30)); }

void print_info(const InfoOptions& options) {
  const CpuFeatures& cpu = cpu_features();
  std::vector<std::string> paths;
  for (auto p : numeric::available_cpu_paths()) paths.emplace_back(numeric::name(p));
  const std::string best(numeric::name(numeric::best_cpu_path()));
  const auto gpus = cuda::devices();
  const std::string no_gpu = gpus.empty() ? cuda::no_device_reason() : "";
  const cuda::RuntimeInfo runtime = cuda::runtime_info();
  const bool native_bf16 = backend::CpuBackend().native_bf16();
  const bench::MatmulRates rates = options.measure ? bench::measure_matmul_rates(1024) : bench::MatmulRates{};

  if (options.json) {
    nlohmann::json j;
    j["version"] = build::kVersion;
    j["build"] = {{"type", build::kBuildType}, {"compiler", build::kCompiler}, {"cuda", build::kWithCuda},
                  {"cuda_compiler", build::kCudaCompiler}, {"cuda_architectures", build::kCudaArchitectures},
                  {"sanitized", build::kSanitized}};
    j["cpu"] = {{"vendor", cpu.vendor}, {"brand", cpu.brand}, {"threads", omp_get_max_threads()},
                {"features", cpu.names()}, {"conversion_paths", paths}, {"conversion_path", best},
                {"onednn_bf16", native_bf16 ? "native" : "widened to f32"}};
    if (options.measure) {
      j["cpu"]["matmul_gflops"] = {{"size", rates.size}, {"f32", rates.f32_gflops}, {"bf16", rates.bf16_gflops},
                                   {"bf16_slower_than_f32", rates.bf16_slower()}};
    }
    nlohmann::json devices = nlohmann::json::array();
    for (const auto& d : gpus) {
      devices.push_back({{"index", d.index}, {"name", d.name},
                         {"compute_capability", fmt::format("{}.{}", d.compute_major, d.compute_minor)},
                         {"multiprocessors", d.multiprocessors}, {"total_bytes", d.total_bytes},
                         {"free_bytes", d.free_bytes}});
    }
    j["cuda"] = {{"devices", devices}, {"driver_version", runtime.driver_version},
                 {"runtime_version", runtime.runtime_version}, {"blas", cuda::blas_library()},
                 {"collectives", cuda::collectives_library()}};
    if (!no_gpu.empty()) j["cuda"]["no_device_reason"] = no_gpu;
    fmt::print("{}\n", j.dump(2));
    return;
  }

  fmt::print("mpx {}\n", build::kVersion);
  fmt::print("build:  {}, {}, CUDA backend {}\n", build::kBuildType, build::kCompiler,
             build::kWithCuda ? fmt::format("built (nvcc {}, architectures {})", build::kCudaCompiler,
                                            build::kCudaArchitectures)
                              : std::string("not built"));
  fmt::print("cpu:    {} ({}), {} threads\n", cpu.brand.empty() ? "unknown" : cpu.brand, cpu.vendor,
             omp_get_max_threads());
  fmt::print("        features: {}\n", fmt::join(cpu.names(), " "));
  fmt::print("        conversion paths: {} (using {})\n", fmt::join(paths, " "), best);
  fmt::print("        oneDNN BF16 products: {}\n",
             native_bf16 ? "native kernels" : "widened to FP32 and rounded once (no oneDNN BF16 kernels on this CPU)");
  if (options.measure) {
    fmt::print("        matmul {}^3: FP32 {:.0f} GFLOP/s, BF16 {:.0f} GFLOP/s ({:.2f}x FP32){}\n", rates.size,
               rates.f32_gflops, rates.bf16_gflops, rates.bf16_gflops / rates.f32_gflops,
               rates.bf16_slower() ? fmt::format("\n        {}", bench::kBf16SlowerNote) : "");
  } else {
    fmt::print("        (mpx info --measure times FP32 and BF16 products)\n");
  }
  if (gpus.empty()) {
    fmt::print("cuda:   {}\n", no_gpu);
  } else {
    fmt::print("cuda:   driver {}.{}, runtime {}.{}\n", runtime.driver_version / 1000,
               runtime.driver_version % 1000 / 10, runtime.runtime_version / 1000,
               runtime.runtime_version % 1000 / 10);
    fmt::print("        {}\n", cuda::blas_library());
    fmt::print("        {}\n", cuda::collectives_library());
    for (const auto& d : gpus) {
      fmt::print("        device {}: {}, compute capability {}.{}, {} SMs, {} ({} free)\n", d.index, d.name,
                 d.compute_major, d.compute_minor, d.multiprocessors, gib(d.total_bytes), gib(d.free_bytes));
    }
  }
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto options = std::make_shared<InfoOptions>();
  CLI::App* cmd = app.add_subcommand("info", "Show version, build options, CPU features and CUDA devices");
  cmd->add_flag("--json", options->json, "Print as JSON");
  cmd->add_flag("--measure", options->measure,
                "Also time FP32 and BF16 products (1024^3, about a second) and say which is faster here");
  cmd->callback([options] { print_info(*options); });
}

}  // namespace mpx::cli
