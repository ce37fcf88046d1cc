// Half, BFloat16 and the FP8 formats as scalar types: every bit pattern decodes as an independent ldexp
// decoder says; rounding at ties, subnormals and overflow; numeric_limits' bit patterns.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../support/reference_formats.h"
#include "mpx/numeric/bfloat16.h"
#include "mpx/numeric/float8.h"
#include "mpx/numeric/half.h"

namespace mpx::numeric {
namespace {

using mpx::testing::decode_reference;
using mpx::testing::FormatSpec;

template <class Narrow>
void expect_every_pattern_decodes_like_reference(const FormatSpec& spec) {
  constexpr unsigned kPatterns = 1u << (8 * sizeof(typename Narrow::Storage));
  for (unsigned bits = 0; bits < kPatterns; ++bits) {
    const auto value = Narrow::from_bits(static_cast<typename Narrow::Storage>(bits));
    const double expected = decode_reference(bits, spec);
    const float actual = value.to_float();
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(actual)) << "bits " << bits;
      EXPECT_EQ(std::signbit(actual), std::signbit(expected)) << "bits " << bits;
      EXPECT_TRUE(value.is_nan());
    } else {
      ASSERT_EQ(static_cast<double>(actual), expected) << "bits " << bits;
      ASSERT_EQ(std::signbit(actual), std::signbit(expected)) << "bits " << bits;  // -0 stays -0
      EXPECT_EQ(value.is_inf(), std::isinf(expected));
      EXPECT_EQ(value.is_subnormal(), std::fpclassify(expected) != FP_ZERO && expected != 0 &&
                                          std::fabs(expected) < std::ldexp(1.0, 1 - spec.bias));
    }
  }
}

TEST(NarrowFormats, EveryHalfPatternDecodesExactly) { expect_every_pattern_decodes_like_reference<Half>(testing::kHalfSpec); }
TEST(NarrowFormats, EveryBFloat16PatternDecodesExactly) {
  expect_every_pattern_decodes_like_reference<BFloat16>(testing::kBFloat16Spec);
}
TEST(NarrowFormats, EveryE4M3PatternDecodesExactly) {
  expect_every_pattern_decodes_like_reference<Float8E4M3>(testing::kE4M3Spec);
}
TEST(NarrowFormats, EveryE5M2PatternDecodesExactly) {
  expect_every_pattern_decodes_like_reference<Float8E5M2>(testing::kE5M2Spec);
}

TEST(Half, RoundsTiesToEven) {
  // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: even mantissa (1.0) wins.
  EXPECT_EQ(Half(1.0f + 0x1p-11f).bits(), 0x3C00);
  // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even).
  EXPECT_EQ(Half(1.0f + 3 * 0x1p-11f).bits(), 0x3C02);
  EXPECT_EQ(Half(1.0f + 0x1p-11f + 0x1p-20f).bits(), 0x3C01);  // just above the tie rounds up
}

TEST(Half, LargestFiniteAndFirstOverflow) {
  EXPECT_EQ(Half(65504.0f).bits(), 0x7BFF);
  EXPECT_EQ(Half(65519.99f).bits(), 0x7BFF);
  EXPECT_EQ(Half(65520.0f).bits(), 0x7C00);  // the tie goes to the even "65536", i.e. infinity
  EXPECT_EQ(Half(-65520.0f).bits(), 0xFC00);
  EXPECT_EQ(Half(std::numeric_limits<float>::infinity()).bits(), 0x7C00);
  EXPECT_EQ(Half(1e30).bits(), 0x7C00);
}

TEST(Half, SubnormalsAndSignedZero) {
  EXPECT_EQ(Half(0x1p-24f).bits(), 0x0001);            // smallest subnormal
  EXPECT_EQ(Half(0x1p-25f).bits(), 0x0000);            // half of it: tie to even zero
  EXPECT_EQ(Half(0x1p-25f + 0x1p-40f).bits(), 0x0001);  // above the tie
  EXPECT_EQ(Half(0x1.8p-24f).bits(), 0x0002);          // 1.5 units: tie to even 2
  EXPECT_EQ(Half(0x1p-14f - 0x1p-24f).bits(), 0x03FF);  // largest subnormal
  EXPECT_EQ(Half(0x1p-14f).bits(), 0x0400);            // smallest normal
  EXPECT_EQ(Half(-0.0f).bits(), 0x8000);
  EXPECT_EQ(Half(-0x1p-30f).bits(), 0x8000);  // underflow keeps the sign
}

TEST(Half, NaNStaysQuietNaNWithSign) {
  const float negative_nan = -std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(Half(negative_nan).is_nan());
  EXPECT_TRUE(Half(negative_nan).signbit());
  const float signalling = std::bit_cast<float>(0x7F800001u);
  EXPECT_EQ(Half(signalling).bits(), 0x7E00);  // quiet bit set even when no payload bit survives
  EXPECT_TRUE(std::isnan(static_cast<float>(Half::from_bits(0x7C01))));
}

TEST(Half, FromDoubleRoundsOnceFromTheExactValue) {
  // 1 + 2^-11 + 2^-40 as a double would round to the tie 1 + 2^-11 in float and then to 1.0:
  // rounding once from the double must give 1 + 2^-10.
  EXPECT_EQ(Half(1.0 + 0x1p-11 + 0x1p-40).bits(), 0x3C01);
  EXPECT_EQ(Half(65519.999999).bits(), 0x7BFF);
  EXPECT_TRUE(Half(std::numeric_limits<double>::quiet_NaN()).is_nan());
}

TEST(BFloat16, RoundsTiesToEvenAndOverflows) {
  EXPECT_EQ(BFloat16(1.0f + 0x1p-8f).bits(), 0x3F80);
  EXPECT_EQ(BFloat16(1.0f + 3 * 0x1p-8f).bits(), 0x3F82);
  EXPECT_EQ(BFloat16(std::numeric_limits<float>::max()).bits(), 0x7F80);
  EXPECT_EQ(BFloat16(std::bit_cast<float>(0x7F7F7FFFu)).bits(), 0x7F7F);
  EXPECT_EQ(BFloat16(std::bit_cast<float>(0x00008000u)).bits(), 0x0000);  // subnormal tie to even
  EXPECT_EQ(BFloat16(std::bit_cast<float>(0x00018000u)).bits(), 0x0002);
  EXPECT_EQ(BFloat16(-0.0f).bits(), 0x8000);
  EXPECT_EQ(BFloat16(1.0 + 0x1p-8 + 0x1p-30).bits(), 0x3F81);  // from double: one rounding
}

TEST(Float8E4M3, SaturatesByDefaultOrGivesNaN) {
  EXPECT_EQ(Float8E4M3(448.0f).bits(), 0x7E);
  EXPECT_EQ(Float8E4M3(464.0f).bits(), 0x7E);  // tie between 448 (even) and the missing 480
  EXPECT_EQ(Float8E4M3(464.01f).bits(), 0x7E);  // saturated
  EXPECT_EQ(Float8E4M3(464.01f, Fp8Overflow::nan).bits(), 0x7F);
  EXPECT_EQ(Float8E4M3(464.0f, Fp8Overflow::nan).bits(), 0x7E);
  EXPECT_EQ(Float8E4M3(-1e9f).bits(), 0xFE);
  EXPECT_EQ(Float8E4M3(std::numeric_limits<float>::infinity()).bits(), 0x7E);
  EXPECT_EQ(Float8E4M3(std::numeric_limits<float>::infinity(), Fp8Overflow::nan).bits(), 0x7F);
  EXPECT_EQ(Float8E4M3(-std::numeric_limits<float>::quiet_NaN()).bits(), 0xFF);
  EXPECT_EQ(Float8E4M3(0x1p-9f).bits(), 0x01);  // smallest subnormal
  EXPECT_EQ(Float8E4M3(0x1p-10f).bits(), 0x00);  // tie to even zero
}

TEST(Float8E5M2, OverflowsToInfinity) {
  EXPECT_EQ(Float8E5M2(57344.0f).bits(), 0x7B);
  EXPECT_EQ(Float8E5M2(61439.0f).bits(), 0x7B);
  EXPECT_EQ(Float8E5M2(61440.0f).bits(), 0x7C);  // tie to the even "65536": infinity
  EXPECT_EQ(Float8E5M2(0x1p-16f).bits(), 0x01);
  EXPECT_TRUE(Float8E5M2(std::numeric_limits<float>::quiet_NaN()).is_nan());
}

TEST(NumericLimits, BitPatternsAreTheDocumentedOnes) {
  using HL = std::numeric_limits<Half>;
  EXPECT_EQ(HL::max().bits(), 0x7BFF);
  EXPECT_EQ(HL::lowest().bits(), 0xFBFF);
  EXPECT_EQ(HL::min().bits(), 0x0400);
  EXPECT_EQ(HL::denorm_min().bits(), 0x0001);
  EXPECT_EQ(HL::epsilon().bits(), 0x1400);  // 2^-10
  EXPECT_EQ(HL::infinity().bits(), 0x7C00);
  EXPECT_TRUE(HL::quiet_NaN().is_nan());
  EXPECT_FALSE(HL::infinity().is_nan());  // (PyTorch once returned a NaN pattern for +inf)
  EXPECT_EQ(static_cast<float>(HL::max()), 65504.0f);
  EXPECT_EQ(static_cast<float>(HL::epsilon()), 0x1p-10f);
  EXPECT_EQ(HL::digits, 11);
  EXPECT_EQ(HL::max_exponent, 16);
  EXPECT_EQ(HL::min_exponent, -13);

  using BL = std::numeric_limits<BFloat16>;
  EXPECT_EQ(BL::max().bits(), 0x7F7F);
  EXPECT_EQ(BL::min().bits(), 0x0080);
  EXPECT_EQ(BL::infinity().bits(), 0x7F80);
  EXPECT_EQ(static_cast<float>(BL::epsilon()), 0x1p-7f);
  EXPECT_EQ(BL::max_exponent, 128);

  using E4 = std::numeric_limits<Float8E4M3>;
  EXPECT_FALSE(E4::has_infinity);
  EXPECT_EQ(static_cast<float>(E4::max()), 448.0f);
  EXPECT_EQ(static_cast<float>(E4::lowest()), -448.0f);
  EXPECT_EQ(static_cast<float>(E4::min()), 0x1p-6f);
  EXPECT_EQ(static_cast<float>(E4::denorm_min()), 0x1p-9f);
  EXPECT_TRUE(E4::quiet_NaN().is_nan());
  EXPECT_EQ(E4::max_exponent, 9);

  using E5 = std::numeric_limits<Float8E5M2>;
  EXPECT_EQ(static_cast<float>(E5::max()), 57344.0f);
  EXPECT_TRUE(E5::infinity().is_inf());
  EXPECT_EQ(static_cast<float>(E5::denorm_min()), 0x1p-16f);
}

TEST(NarrowFormats, OverflowThresholdsAreTheFirstOverflowingFloats) {
  auto check = [](auto tag, std::uint32_t threshold) {
    using Narrow = decltype(tag);
    const float at = std::bit_cast<float>(threshold);
    const float below = std::bit_cast<float>(threshold - 1);
    EXPECT_FALSE(Narrow(at, Fp8Overflow::nan).is_finite()) << threshold;
    EXPECT_TRUE(Narrow(below, Fp8Overflow::nan).is_finite()) << threshold;
  };
  check(Half{}, detail::HalfFormat::kOverflowThreshold);
  check(BFloat16{}, detail::BFloat16Format::kOverflowThreshold);
  check(Float8E4M3{}, detail::E4M3Format::kOverflowThreshold);
  check(Float8E5M2{}, detail::E5M2Format::kOverflowThreshold);
}

}  // namespace
}  // namespace mpx::numeric

namespace mpx::testing {
namespace {

// The exhaustive sweeps use fast forms of the references; on a million random inputs they agree with the
// defining ones (libgcc's soft-float _Float16 conversion, nearbyint on a scaled double).
TEST(TestReferences, FastFormsAgreeWithTheDefiningOnes) {
  std::uint32_t state = 12345;
  std::vector<float> inputs(1 << 20);
  for (auto& x : inputs) {
    state = state * 1664525u + 1013904223u;
    x = std::bit_cast<float>(state);
  }
  std::vector<std::uint16_t> fast(inputs.size());
  if (__builtin_cpu_supports("f16c")) {
    half_reference_f16c(inputs.data(), fast.data(), inputs.size());
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      if (!std::isnan(inputs[i])) {
        ASSERT_EQ(fast[i], half_reference(inputs[i])) << inputs[i];
      }
    }
  }
  for (const FormatSpec& spec : {kE4M3Spec, kE5M2Spec, kHalfSpec}) {
    for (float x : inputs) {
      const double a = round_reference(x, spec), b = round_reference_fast(x, spec);
      if (std::isnan(a)) {
        ASSERT_TRUE(std::isnan(b));
      } else {
        ASSERT_EQ(a, b) << x;
      }
    }
  }
}

}  // namespace
}  // namespace mpx::testing
