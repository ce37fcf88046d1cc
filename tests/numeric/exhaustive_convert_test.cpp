// All 2^32 float inputs through every CPU path, against independent references: the compiler's _Float16
// (as emitted for F16C) for Half, integer rounding for BFloat16, the FPU's rounding of an exactly scaled
// double for the FP8 formats. Statistics: every SIMD path's, on every chunk, and the scalar path's on every
// 16th chunk, equal counts derived from the reference. Label `exhaustive`; well under a minute per
// format on 2 cores.
#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "../support/conversion_stats.h"
#include "../support/reference_formats.h"
#include "mpx/numeric/convert.h"

namespace mpx::numeric {
namespace {

using mpx::testing::FormatSpec;

constexpr std::uint64_t kChunk = std::uint64_t{1} << 20;
constexpr std::uint64_t kChunks = (std::uint64_t{1} << 32) / kChunk;

struct Failure {
  std::atomic<std::uint64_t> count{0};
  std::atomic<std::uint32_t> first_input{0};
  void record(std::uint32_t input) {
    if (count.fetch_add(1) == 0) first_input = input;
  }
};

// `reference(in, expected, n, stats)` fills the expected outputs (for NaN inputs any NaN of the input's
// sign passes) and adds the expected statistics.
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
    std::vector<std::uint32_t> expected(kChunk);
#pragma omp for schedule(dynamic, 4)
    for (std::int64_t c = 0; c < static_cast<std::int64_t>(kChunks); ++c) {
      const auto base = static_cast<std::uint32_t>(static_cast<std::uint64_t>(c) * kChunk);
      for (std::uint32_t i = 0; i < kChunk; ++i) in[i] = std::bit_cast<float>(base + i);

      ConversionStats expected_stats;
      expected_stats.elements = kChunk;
      reference(in.data(), expected.data(), kChunk, expected_stats);

      // The scalar path is ~4x slower with statistics: check them on a sixteenth of the chunks.
      ConversionStats scalar_stats;
      const bool scalar_with_stats = c % 16 == 0;
      convert(in.data(), DType::f32, scalar_out.data(), to, kChunk, {CpuPath::scalar, 1, overflow},
              scalar_with_stats ? &scalar_stats : nullptr);
      if (scalar_with_stats && !same_stats(scalar_stats, expected_stats)) ++stats_failures;

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
        if (!same_stats(stats, expected_stats)) ++stats_failures;
        if (std::memcmp(out.data(), scalar_out.data(), out.size()) != 0) {  // NaN payloads included
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
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "the fast _Float16 reference needs F16C";
  const FormatSpec spec = mpx::testing::kHalfSpec;
  run_exhaustive(DType::f16, Fp8Overflow::saturate, spec,
                 [&](const float* in, std::uint32_t* expected, std::size_t n, ConversionStats& s) {
                   std::vector<std::uint16_t> bits(n);
                   std::vector<float> values(n);
                   mpx::testing::half_reference_f16c(in, bits.data(), n);
                   mpx::testing::half_widen_f16c(bits.data(), values.data(), n);
                   for (std::size_t i = 0; i < n; ++i) {
                     const double value = values[i];
                     note(in[i], std::isinf(value) && std::isfinite(in[i]) ? INFINITY : value, spec.max_finite,
                          0x1p-14, s);
                     expected[i] = bits[i];
                   }
                 });
}

TEST(ExhaustiveConvert, AllFloatsToBFloat16MatchIntegerReferenceOnEveryPath) {
  const FormatSpec spec = mpx::testing::kBFloat16Spec;
  run_exhaustive(DType::bf16, Fp8Overflow::saturate, spec,
                 [&](const float* in, std::uint32_t* expected, std::size_t n, ConversionStats& s) {
                   for (std::size_t i = 0; i < n; ++i) {
                     const std::uint16_t bits = std::isnan(in[i]) ? std::uint16_t{0x7FC0}
                                                                  : mpx::testing::bfloat16_reference(in[i]);
                     const float value = std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
                     note(in[i], value, spec.max_finite, 0x1p-126, s);
                     expected[i] = bits;
                   }
                 });
}

// Packs an exactly representable magnitude into FP8 bits, from its float encoding.
std::uint32_t encode_magnitude(double magnitude, const FormatSpec& spec) {
  if (std::isnan(magnitude)) return 0x7Fu;  // E4M3's NaN; also a NaN pattern in E5M2
  if (std::isinf(magnitude)) return static_cast<std::uint32_t>(((1 << spec.exp_bits) - 1) << spec.man_bits);
  const auto value = static_cast<float>(magnitude);  // exact
  const int min_exponent = 1 - spec.bias;
  if (value < std::ldexp(1.0f, min_exponent)) {  // subnormal or zero: a whole number of the smallest unit
    return static_cast<std::uint32_t>(value * std::ldexp(1.0f, spec.man_bits - min_exponent));
  }
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const int exponent = static_cast<int>(bits >> 23) - 127;
  const std::uint32_t fraction = (bits >> (23 - spec.man_bits)) & ((1u << spec.man_bits) - 1);
  return (static_cast<std::uint32_t>(exponent + spec.bias) << spec.man_bits) | fraction;
}

void fp8_exhaustive(DType to, Fp8Overflow overflow, const FormatSpec& spec, double min_normal) {
  const bool saturate = overflow == Fp8Overflow::saturate;
  run_exhaustive(to, overflow, spec, [&](const float* in, std::uint32_t* expected, std::size_t n, ConversionStats& s) {
    for (std::size_t i = 0; i < n; ++i) {
      const float x = in[i];
      double rounded = mpx::testing::round_reference_fast(x, spec);
      note(x, rounded, spec.max_finite, min_normal, s);
      if (std::isinf(rounded) && !spec.ieee_specials) {
        rounded = saturate ? std::copysign(spec.max_finite, rounded) : std::copysign(NAN, rounded);
      }
      expected[i] = encode_magnitude(std::fabs(rounded), spec) | (std::signbit(x) ? 0x80u : 0u);
    }
  });
}

TEST(ExhaustiveConvert, AllFloatsToE4M3SaturatingMatchFpuRoundingReferenceOnEveryPath) {
  fp8_exhaustive(DType::f8_e4m3, Fp8Overflow::saturate, mpx::testing::kE4M3Spec, 0x1p-6);
}

TEST(ExhaustiveConvert, AllFloatsToE4M3NonSaturatingMatchFpuRoundingReferenceOnEveryPath) {
  fp8_exhaustive(DType::f8_e4m3, Fp8Overflow::nan, mpx::testing::kE4M3Spec, 0x1p-6);
}

TEST(ExhaustiveConvert, AllFloatsToE5M2MatchFpuRoundingReferenceOnEveryPath) {
  fp8_exhaustive(DType::f8_e5m2, Fp8Overflow::saturate, mpx::testing::kE5M2Spec, 0x1p-14);
}

}  // namespace
}  // namespace mpx::numeric
