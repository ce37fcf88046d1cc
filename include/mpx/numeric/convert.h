// Bulk conversion between float and the narrow formats, on the CPU, with optional statistics computed in
// the same pass (what conversion reports and numeric telemetry use). Every path (scalar reference,
// AVX2/F16C, AVX-512, AVX512_BF16) gives bit-identical results; the fastest the CPU supports is chosen.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "mpx/numeric/bfloat16.h"
#include "mpx/numeric/dtype.h"
#include "mpx/numeric/float8.h"
#include "mpx/numeric/half.h"

namespace mpx::numeric {

// What a conversion did to its values. Counts are of elements.
struct ConversionStats {
  std::uint64_t elements = 0;
  std::uint64_t nan = 0;        // NaN inputs (they stay NaN)
  std::uint64_t inf = 0;        // infinite inputs
  std::uint64_t overflow = 0;   // finite inputs beyond the target's range (became inf, max or NaN)
  std::uint64_t underflow = 0;  // non-zero inputs that became zero
  std::uint64_t subnormal = 0;  // non-zero outputs that are subnormal in the target format
  float max_abs = 0.0f;         // largest |input| among non-NaN inputs (may be inf)

  void merge(const ConversionStats& other);
};

// The CPU implementations. `automatic` picks the best one this CPU supports.
enum class CpuPath : std::uint8_t { automatic, scalar, avx2, avx512, avx512_bf16 };

std::string_view name(CpuPath path);
CpuPath parse_cpu_path(std::string_view text);           // throws InvalidArgument
bool is_available(CpuPath path);                         // compiled in and supported by this CPU
CpuPath best_cpu_path();
std::vector<CpuPath> available_cpu_paths();              // scalar first, best last

struct ConvertOptions {
  CpuPath path = CpuPath::automatic;
  int threads = 0;  // 0: all of OpenMP's threads for large arrays; small arrays always use one
  Fp8Overflow fp8_overflow = Fp8Overflow::saturate;
};

// Is there a conversion from `from` to `to`? (float <-> each narrow format, f16 <-> bf16.)
bool conversion_supported(DType from, DType to);

// Converts `count` elements. Throws InvalidArgument for an unsupported pair, a null pointer with a
// non-zero count, or overlapping buffers; `stats`, when given, is overwritten.
void convert(const void* src, DType src_type, void* dst, DType dst_type, std::size_t count,
             const ConvertOptions& options = {}, ConversionStats* stats = nullptr);

// Typed forms; spans of different lengths are an InvalidArgument.
void convert(std::span<const float> src, std::span<Half> dst, const ConvertOptions& options = {},
             ConversionStats* stats = nullptr);
void convert(std::span<const float> src, std::span<BFloat16> dst, const ConvertOptions& options = {},
             ConversionStats* stats = nullptr);
void convert(std::span<const float> src, std::span<Float8E4M3> dst, const ConvertOptions& options = {},
             ConversionStats* stats = nullptr);
void convert(std::span<const float> src, std::span<Float8E5M2> dst, const ConvertOptions& options = {},
             ConversionStats* stats = nullptr);
void convert(std::span<const Half> src, std::span<float> dst, const ConvertOptions& options = {},
             ConversionStats* stats = nullptr);
void convert(std::span<const BFloat16> src, std::span<float> dst, const ConvertOptions& options = {},
             ConversionStats* stats = nullptr);
void convert(std::span<const Float8E4M3> src, std::span<float> dst, const ConvertOptions& options = {},
             ConversionStats* stats = nullptr);
void convert(std::span<const Float8E5M2> src, std::span<float> dst, const ConvertOptions& options = {},
             ConversionStats* stats = nullptr);
void convert(std::span<const Half> src, std::span<BFloat16> dst, const ConvertOptions& options = {},
             ConversionStats* stats = nullptr);
void convert(std::span<const BFloat16> src, std::span<Half> dst, const ConvertOptions& options = {},
             ConversionStats* stats = nullptr);

}  // namespace mpx::numeric
