// `mpx bench <what>`: user-facing benchmarks that print a table or JSON. This file: `bench convert`;
// `bench matmul` and `bench train` are in cmd_bench_training.cpp.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "validators.h"
#include "mpx/bench/conversion.h"
#include "mpx/core/error.h"

namespace mpx::cli {

namespace {

struct ConvertBenchOptions {
  std::string device = "cpu";
  std::size_t elements = std::size_t{1} << 26;
  int threads = 0;
  int repeats = 7;
  std::string path = "auto";
  std::string from, to;
  bool stats = false;
  bool json = false;
};

void run_convert_bench(const ConvertBenchOptions& o) {
  bench::ConversionBenchConfig config;
  config.device = o.device == "cuda" ? bench::Device::cuda : bench::Device::cpu;
  config.elements = o.elements;
  config.threads = o.threads;
  config.repeats = o.repeats;
  config.path = numeric::parse_cpu_path(o.path);
  config.with_stats = o.stats;
  if (!o.from.empty() || !o.to.empty()) {
    const std::optional<DType> from = o.from.empty() ? std::nullopt : std::optional(parse_dtype(o.from));
    const std::optional<DType> to = o.to.empty() ? std::nullopt : std::optional(parse_dtype(o.to));
    for (const auto& [f, t] : bench::all_conversion_directions()) {
      if ((!from || *from == f) && (!to || *to == t)) config.directions.emplace_back(f, t);
    }
    if (config.directions.empty()) {
      throw InvalidArgument("no conversion matches --from " + (o.from.empty() ? "*" : o.from) + " --to " +
                            (o.to.empty() ? "*" : o.to));
    }
  }
  const auto results = bench::run_conversion_benchmark(config);
  if (o.json) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : results) {
      j.push_back({{"from", name(r.from)}, {"to", name(r.to)}, {"device", r.device}, {"path", r.path},
                   {"threads", r.threads}, {"elements", r.elements}, {"bytes", r.bytes},
                   {"stats", o.stats}, {"seconds", r.seconds}, {"gbps", r.gbps}, {"copy_gbps", r.copy_gbps},
                   {"ratio", r.ratio}});
    }
    fmt::print("{}\n", j.dump(2));
    return;
  }
  fmt::print("{:<8} {:<8} {:<6} {:<14} {:>7} {:>10} {:>10} {:>10} {:>6}\n", "from", "to", "device", "path",
             "threads", "ms", "GB/s", "copy GB/s", "ratio");
  for (const auto& r : results) {
    fmt::print("{:<8} {:<8} {:<6} {:<14} {:>7} {:>10.3f} {:>10.1f} {:>10.1f} {:>6.2f}\n", name(r.from), name(r.to),
               r.device, r.path.substr(0, 14), r.threads, r.seconds * 1e3, r.gbps, r.copy_gbps, r.ratio);
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Run a benchmark and print a table or JSON");
  bench->require_subcommand(1);
  add_bench_training_commands(*bench);
  add_bench_gpt_command(*bench);

  auto o = std::make_shared<ConvertBenchOptions>();
  CLI::App* convert = bench->add_subcommand(
      "convert", "GB/s (bytes read + written) of each conversion beside a plain copy of the same bytes");
  convert->add_option("--device", o->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  convert->add_option("--elements", o->elements, "Elements per array")->check(positive())->capture_default_str();
  convert->add_option("--threads", o->threads, "CPU threads (0 = all)")->check(non_negative())->capture_default_str();
  convert->add_option("--repeats", o->repeats, "Timed runs; the median is reported")->check(positive())->capture_default_str();
  convert->add_option("--path", o->path, "CPU path: auto, scalar, avx2, avx512, avx512_bf16")
      ->check(CLI::IsMember({"auto", "scalar", "avx2", "avx512", "avx512_bf16"}))
      ->capture_default_str();
  convert->add_option("--from", o->from, "Only conversions from this dtype (f32, f16, bf16, f8_e4m3, f8_e5m2)");
  convert->add_option("--to", o->to, "Only conversions to this dtype");
  convert->add_flag("--stats", o->stats, "Also gather conversion statistics in the timed pass");
  convert->add_flag("--json", o->json, "Print JSON: a list of objects with from, to, device, threads, gbps, copy_gbps, ratio");
  convert->callback([o] { run_convert_bench(*o); });
}

}  // namespace mpx::cli
