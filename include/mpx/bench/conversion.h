// The conversion benchmark behind `mpx bench convert`: GB/s of each direction (bytes read + written)
// beside a plain copy of the same number of bytes measured in the same run, on the CPU or a CUDA device.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "mpx/numeric/convert.h"
#include "mpx/numeric/dtype.h"

namespace mpx::bench {

enum class Device { cpu, cuda };

struct ConversionBenchConfig {
  Device device = Device::cpu;
  std::size_t elements = std::size_t{1} << 26;  // 256 MiB of f32
  int threads = 0;                              // CPU: 0 = all OpenMP threads
  int repeats = 7;
  numeric::CpuPath path = numeric::CpuPath::automatic;
  bool with_stats = false;                      // also gather ConversionStats in the timed pass
  std::vector<std::pair<DType, DType>> directions;  // empty: all supported directions
};

struct ConversionBenchResult {
  DType from = DType::f32, to = DType::f16;
  std::string device;   // "cpu" or "cuda"
  std::string path;     // CPU path name, or the GPU's name
  int threads = 1;
  std::size_t elements = 0;
  std::size_t bytes = 0;         // read + written per conversion
  double seconds = 0;            // median over repeats
  double gbps = 0;               // bytes / seconds / 1e9
  double copy_gbps = 0;          // a plain copy moving the same bytes, same threads
  double ratio = 0;              // gbps / copy_gbps
};

std::vector<std::pair<DType, DType>> all_conversion_directions();

// Throws InvalidArgument for bad settings, NotAvailable when the device or path is missing.
std::vector<ConversionBenchResult> run_conversion_benchmark(const ConversionBenchConfig& config);

}  // namespace mpx::bench
