#include "mpx/bench/conversion.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>

#include "mpx/backend/cuda.h"
#include "mpx/core/error.h"

namespace mpx::bench {

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <class Fn>
double median_seconds(int repeats, Fn&& fn) {
  fn();  // warm-up: page faults, caches, clocks
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    const auto start = Clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  return median(times);
}

// Typical training values: normal with a spread of binades, some beyond FP8 range; never all zeros.
std::vector<float> realistic_floats(std::size_t n, unsigned seed) {
  std::vector<float> out(n);
#pragma omp parallel
  {
    std::mt19937 rng(seed + static_cast<unsigned>(omp_get_thread_num()));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> binade(-12, 12);
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(n); ++i) {
      out[i] = std::ldexp(normal(rng), binade(rng));
    }
  }
  return out;
}

// Source bytes in `from` format, made from realistic floats through the library's own conversion.
std::unique_ptr<unsigned char[]> make_source(DType from, std::size_t n) {
  const std::vector<float> floats = realistic_floats(n, 1234);
  auto bytes = std::make_unique_for_overwrite<unsigned char[]>(n * size_bytes(from));
  if (from == DType::f32) {
    std::memcpy(bytes.get(), floats.data(), n * sizeof(float));
  } else {
    numeric::convert(floats.data(), DType::f32, bytes.get(), from, n);
  }
  return bytes;
}

void parallel_copy(void* dst, const void* src, std::size_t bytes, int threads) {
#pragma omp parallel num_threads(threads)
  {
    const auto t = static_cast<std::size_t>(omp_get_thread_num());
    const auto nt = static_cast<std::size_t>(omp_get_num_threads());
    const std::size_t begin = bytes * t / nt / 64 * 64, end = t + 1 == nt ? bytes : bytes * (t + 1) / nt / 64 * 64;
    std::memcpy(static_cast<char*>(dst) + begin, static_cast<const char*>(src) + begin, end - begin);
  }
}

ConversionBenchResult measure_cpu(DType from, DType to, const ConversionBenchConfig& config) {
  const std::size_t n = config.elements;
  const auto src = make_source(from, n);
  auto dst = std::make_unique_for_overwrite<unsigned char[]>(n * size_bytes(to));
  std::memset(dst.get(), 0xA5, n * size_bytes(to));  // touch every page before timing
  numeric::ConvertOptions options;
  options.path = config.path;
  options.threads = config.threads;
  numeric::ConversionStats stats;

  ConversionBenchResult r;
  r.from = from;
  r.to = to;
  r.device = "cpu";
  r.path = std::string(numeric::name(config.path == numeric::CpuPath::automatic ? numeric::best_cpu_path() : config.path));
  r.threads = config.threads > 0 ? config.threads : omp_get_max_threads();
  r.elements = n;
  r.bytes = n * (size_bytes(from) + size_bytes(to));
  r.seconds = median_seconds(config.repeats, [&] {
    numeric::convert(src.get(), from, dst.get(), to, n, options, config.with_stats ? &stats : nullptr);
  });

  const std::size_t copy_bytes = r.bytes / 2;  // read + written = r.bytes
  auto copy_src = std::make_unique_for_overwrite<unsigned char[]>(copy_bytes);
  auto copy_dst = std::make_unique_for_overwrite<unsigned char[]>(copy_bytes);
  std::memset(copy_src.get(), 1, copy_bytes);
  std::memset(copy_dst.get(), 2, copy_bytes);
  const double copy_seconds =
      median_seconds(config.repeats, [&] { parallel_copy(copy_dst.get(), copy_src.get(), copy_bytes, r.threads); });
  r.gbps = static_cast<double>(r.bytes) / r.seconds / 1e9;
  r.copy_gbps = static_cast<double>(r.bytes) / copy_seconds / 1e9;
  r.ratio = r.gbps / r.copy_gbps;
  return r;
}

ConversionBenchResult measure_cuda(DType from, DType to, const ConversionBenchConfig& config) {
  const std::size_t n = config.elements;
  const auto host_src = make_source(from, n);
  cuda::DeviceBuffer src(n * size_bytes(from)), dst(n * size_bytes(to));
  src.copy_from_host(host_src.get(), n * size_bytes(from));
  numeric::ConversionStats stats;

  ConversionBenchResult r;
  r.from = from;
  r.to = to;
  r.device = "cuda";
  r.path = cuda::devices().at(0).name;
  r.threads = 1;
  r.elements = n;
  r.bytes = n * (size_bytes(from) + size_bytes(to));
  r.seconds = median_seconds(config.repeats, [&] {
    cuda::convert(src.data(), from, dst.data(), to, n, numeric::Fp8Overflow::saturate,
                  config.with_stats ? &stats : nullptr);
  });
  const std::size_t copy_bytes = r.bytes / 2;
  cuda::DeviceBuffer copy_src(copy_bytes), copy_dst(copy_bytes);
  const double copy_seconds = median_seconds(config.repeats, [&] {
    cuda::copy_device_to_device(copy_dst.data(), copy_src.data(), copy_bytes);
    cuda::synchronize();
  });
  r.gbps = static_cast<double>(r.bytes) / r.seconds / 1e9;
  r.copy_gbps = static_cast<double>(r.bytes) / copy_seconds / 1e9;
  r.ratio = r.gbps / r.copy_gbps;
  return r;
}

}  // namespace

std::vector<std::pair<DType, DType>> all_conversion_directions() {
  std::vector<std::pair<DType, DType>> out;
  for (DType narrow : {DType::f16, DType::bf16, DType::f8_e4m3, DType::f8_e5m2}) {
    out.emplace_back(DType::f32, narrow);
    out.emplace_back(narrow, DType::f32);
  }
  out.emplace_back(DType::f16, DType::bf16);
  out.emplace_back(DType::bf16, DType::f16);
  return out;
}

std::vector<ConversionBenchResult> run_conversion_benchmark(const ConversionBenchConfig& config) {
  if (config.elements == 0) throw InvalidArgument("--elements must be positive");
  if (config.repeats < 1) throw InvalidArgument("--repeats must be at least 1");
  if (config.threads < 0) throw InvalidArgument("--threads must be >= 0 (0 = all cores)");
  if (config.device == Device::cuda) cuda::require_device();
  if (config.device == Device::cpu && !numeric::is_available(config.path)) {
    throw NotAvailable("CPU path '" + std::string(numeric::name(config.path)) + "' is not available on this CPU");
  }
  const auto directions = config.directions.empty() ? all_conversion_directions() : config.directions;
  std::vector<ConversionBenchResult> results;
  for (const auto& [from, to] : directions) {
    if (!numeric::conversion_supported(from, to)) {
      throw InvalidArgument("no conversion from " + std::string(name(from)) + " to " + std::string(name(to)));
    }
    results.push_back(config.device == Device::cpu ? measure_cpu(from, to, config) : measure_cuda(from, to, config));
  }
  return results;
}

}  // namespace mpx::bench
