// All 2^32 float inputs through every CPU path, against independent references: the compiler's _Float16
// for Half, integer rounding for BFloat16, nearbyint on exactly scaled doubles for the FP8 formats.
// Also: every path's statistics equal the scalar path's, and the scalar path's equal counts derived from
// the reference. Label `exhaustive`; about a minute per format on 2 cores.
#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "../support/reference_formats.h"
#include "mpx/numeric/convert.h"

namespace mpx::numeric {
namespace {

using mpx::testing::FormatSpec;

constexpr std::uint64_t kChunk = std::uint64_t{1} << 20;
constexpr std::uint64_t kChunks = (std::uint64_t{1} << 32) / kChunk;

bool same_stats(const ConversionStats& a, const ConversionStats& b) {
  return a.elements == b.elements && a.nan == b.nan && a.inf == b.inf && a.overflow == b.overflow &&
         a.underflow == b.underflow && a.subnormal == b.subnormal &&
         std::bit_cast<std::uint32_t>(a.max_abs) == std::bit_cast<std::uint32_t>(b.max_abs);
}

struct Failure {
  std::atomic<std::uint64_t> count{0};
  std::atomic<std::uint32_t> first_input{0};
  void record(std::uint32_t input) {
    if (count.fetch_add(1) == 0) first_input = input;
  }
};

// `reference(float, out_expected_bits, stats)` fills the expected output (for NaN inputs, any NaN of the
// input's sign passes) and adds the expected statistics.
template <class Reference>
void run_exhaustive(DType to, Fp8Overflow overflow, const FormatSpec& spec, Reference reference) {
  const auto paths = available_cpu_paths();
  Failure value_failure;
  std::vector<Failure> path_failures(paths.size());
  std::atomic<std::uint64_t> stats_failures{0};
  const std::size_t out_size = size_bytes(to);

#pragma omp parallel
  {
    std::vector<float> in(kChunk);
    std::vector<unsigned char> scalar_out(kChunk * out_size), out(kChunk * out_size);
#pragma omp for schedule(dynamic, 4)
    for (std::int64_t c = 0; c < static_cast<std::int64_t>(kChunks); ++c) {
      const auto base = static_cast<std::uint32_t>(static_cast<std::uint64_t>(c) * kChunk);
      for (std::uint32_t i = 0; i < kChunk; ++i) in[i] = std::bit_cast<float>(base + i);

      ConversionStats expected_stats;
      expected_stats.elements = kChunk;
      std::vector<std::uint32_t> expected(kChunk);
      for (std::uint32_t i = 0; i < kChunk; ++i) expected[i] = reference(in[i], expected_stats);

      ConversionStats scalar_stats;
      convert(in.data(), DType::f32, scalar_out.data(), to, kChunk, {CpuPath::scalar, 1, overflow}, &scalar_stats);
      if (!same_stats(scalar_stats, expected_stats)) ++stats_failures;

      // The scalar path against the independent reference, element by element.
      for (std::uint32_t i = 0; i < kChunk; ++i) {
        std::uint32_t bits = 0;
        std::memcpy(&bits, &scalar_out[i * out_size], out_size);
        const bool ok = std::isnan(in[i])
                            ? mpx::testing::same_nan_and_sign(mpx::testing::decode_reference(bits, spec), in[i])
                            : bits == expected[i];
        if (!ok) value_failure.record(base + i);
      }
      // Every other path bit for bit against the scalar path (NaN payloads included).
      for (std::size_t p = 0; p < paths.size(); ++p) {
        if (paths[p] == CpuPath::scalar) continue;
        ConversionStats stats;
        convert(in.data(), DType::f32, out.data(), to, kChunk, {paths[p], 1, overflow}, &stats);
        if (!same_stats(stats, scalar_stats)) ++stats_failures;
        if (std::memcmp(out.data(), scalar_out.data(), out.size()) != 0) {
          for (std::uint32_t i = 0; i < kChunk; ++i) {
            if (std::memcmp(&out[i * out_size], &scalar_out[i * out_size], out_size) != 0) {
              path_failures[p].record(base + i);
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(value_failure.count.load(), 0u) << "scalar path: first mismatch with the reference at input bits 0x"
                                            << std::hex << value_failure.first_input.load();
  for (std::size_t p = 0; p < paths.size(); ++p) {
    EXPECT_EQ(path_failures[p].count.load(), 0u)
        << name(paths[p]) << ": first bit difference from the scalar path at input bits 0x" << std::hex
        << path_failures[p].first_input.load();
  }
  EXPECT_EQ(stats_failures.load(), 0u) << "chunks whose statistics differ";
}

// Expected statistics from the reference's point of view.
void note(float x, double rounded, double max_finite, double min_normal, ConversionStats& s) {
  if (std::isnan(x)) {
    ++s.nan;
    return;
  }
  if (std::isinf(x)) ++s.inf;
  s.max_abs = std::fmax(s.max_abs, std::fabs(x));
  if (std::isfinite(x) && std::fabs(rounded) > max_finite) ++s.overflow;
  if (x != 0 && rounded == 0) ++s.underflow;
  if (rounded != 0 && std::fabs(rounded) < min_normal) ++s.subnormal;
}

TEST(ExhaustiveConvert, AllFloatsToHalfMatchCompilerFloat16OnEveryPath) {
  const FormatSpec spec = mpx::testing::kHalfSpec;
  run_exhaustive(DType::f16, Fp8Overflow::saturate, spec, [&](float x, ConversionStats& s) {
    const std::uint16_t bits = mpx::testing::half_reference(x);
    const double value = mpx::testing::decode_reference(bits, spec);
    note(x, std::isinf(value) && std::isfinite(x) ? INFINITY : value, spec.max_finite, 0x1p-14, s);
    return static_cast<std::uint32_t>(bits);
  });
}

TEST(ExhaustiveConvert, AllFloatsToBFloat16MatchIntegerReferenceOnEveryPath) {
  const FormatSpec spec = mpx::testing::kBFloat16Spec;
  run_exhaustive(DType::bf16, Fp8Overflow::saturate, spec, [&](float x, ConversionStats& s) {
    const std::uint16_t bits = std::isnan(x) ? static_cast<std::uint16_t>(std::signbit(x) ? 0xFFC0 : 0x7FC0)
                                             : mpx::testing::bfloat16_reference(x);
    const double value = mpx::testing::decode_reference(bits, spec);
    note(x, value, spec.max_finite, 0x1p-126, s);
    return static_cast<std::uint32_t>(bits);
  });
}

// Encodes an exactly representable magnitude to FP8 bits with double arithmetic (frexp/ldexp).
std::uint32_t encode_magnitude(double magnitude, const FormatSpec& spec) {
  if (std::isnan(magnitude)) return 0x7Fu;  // E4M3's NaN; also a NaN pattern in E5M2
  if (std::isinf(magnitude)) return static_cast<std::uint32_t>(((1 << spec.exp_bits) - 1) << spec.man_bits);
  if (magnitude == 0) return 0;
  int e2 = 0;
  std::frexp(magnitude, &e2);
  const int exponent = e2 - 1;
  const int min_exponent = 1 - spec.bias;
  if (exponent < min_exponent) {
    return static_cast<std::uint32_t>(std::ldexp(magnitude, spec.man_bits - min_exponent));
  }
  const auto fraction = static_cast<std::uint32_t>(std::ldexp(magnitude, spec.man_bits - exponent)) - (1u << spec.man_bits);
  return (static_cast<std::uint32_t>(exponent + spec.bias) << spec.man_bits) | fraction;
}

void fp8_exhaustive(DType to, Fp8Overflow overflow, const FormatSpec& spec, double min_normal) {
  const bool saturate = overflow == Fp8Overflow::saturate;
  run_exhaustive(to, overflow, spec, [&](float x, ConversionStats& s) {
    double rounded = mpx::testing::round_reference(x, spec);
    note(x, rounded, spec.max_finite, min_normal, s);
    if (std::isinf(rounded) && !spec.ieee_specials) {
      rounded = saturate ? std::copysign(spec.max_finite, rounded) : std::copysign(NAN, rounded);
    }
    return encode_magnitude(std::fabs(rounded), spec) | (std::signbit(x) ? 0x80u : 0u);
  });
}

TEST(ExhaustiveConvert, AllFloatsToE4M3SaturatingMatchNearbyintReferenceOnEveryPath) {
  fp8_exhaustive(DType::f8_e4m3, Fp8Overflow::saturate, mpx::testing::kE4M3Spec, 0x1p-6);
}

TEST(ExhaustiveConvert, AllFloatsToE4M3NonSaturatingMatchNearbyintReferenceOnEveryPath) {
  fp8_exhaustive(DType::f8_e4m3, Fp8Overflow::nan, mpx::testing::kE4M3Spec, 0x1p-6);
}

TEST(ExhaustiveConvert, AllFloatsToE5M2MatchNearbyintReferenceOnEveryPath) {
  fp8_exhaustive(DType::f8_e5m2, Fp8Overflow::saturate, mpx::testing::kE5M2Spec, 0x1p-14);
}

}  // namespace
}  // namespace mpx::numeric
