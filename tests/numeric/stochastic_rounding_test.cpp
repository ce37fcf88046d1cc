// Stochastic rounding: unbiased on average, exact values untouched, NaN/inf kept, and reproducible from
// (seed, index) whatever the thread count or the way an array is split.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "mpx/core/error.h"
#include "mpx/numeric/philox.h"
#include "mpx/numeric/stochastic_rounding.h"

namespace mpx::numeric {
namespace {

// Mean of `draws` roundings of x must be within 5 standard errors of x.
template <class Round>
void expect_unbiased(float x, Round round, int draws = 200000) {
  double sum = 0, lo = INFINITY, hi = -INFINITY;
  for (int i = 0; i < draws; ++i) {
    const double r = round(x, 42, static_cast<std::uint64_t>(i));
    sum += r;
    lo = std::min(lo, r);
    hi = std::max(hi, r);
  }
  const double mean = sum / draws;
  const double gap = hi - lo;  // the two neighbours
  const double p = gap > 0 ? (x - lo) / gap : 0;
  const double standard_error = gap * std::sqrt(p * (1 - p) / draws);
  EXPECT_NEAR(mean, x, 5 * standard_error + 1e-30) << "x = " << x;
  EXPECT_LE(lo, x);
  EXPECT_GE(hi, x);
}

TEST(StochasticRounding, BFloat16IsUnbiased) {
  auto round = [](float x, std::uint64_t seed, std::uint64_t i) {
    return static_cast<double>(static_cast<float>(stochastic_round_bfloat16(x, seed, i)));
  };
  for (float x : {1.0f + 0x1p-10f, 1.0f + 0.3f * 0x1p-7f, -3.14159f, 1e-3f, 0.7f, 1e-40f, -2.5e-39f}) {
    expect_unbiased(x, round);
  }
}

TEST(StochasticRounding, HalfIsUnbiasedIncludingSubnormals) {
  auto round = [](float x, std::uint64_t seed, std::uint64_t i) {
    return static_cast<double>(static_cast<float>(stochastic_round_half(x, seed, i)));
  };
  for (float x : {1.0f + 0x1p-13f, 1.0f + 0.3f * 0x1p-10f, -3.14159f, 1e-3f, 3e-6f, 1e-8f, 0x1p-31f, 60001.3f}) {
    expect_unbiased(x, round);
  }
}

TEST(StochasticRounding, AccumulatesSmallUpdatesThatNearestRoundingLoses) {
  // 1 + 1e-4 a thousand times: round-to-nearest in BF16 never moves off 1.0; stochastic does, on average.
  float nearest = 1.0f, stochastic = 1.0f;
  for (int i = 0; i < 1000; ++i) {
    nearest = static_cast<float>(BFloat16(nearest + 1e-4f));
    stochastic = static_cast<float>(stochastic_round_bfloat16(stochastic + 1e-4f, 7, static_cast<std::uint64_t>(i)));
  }
  EXPECT_EQ(nearest, 1.0f);
  EXPECT_NEAR(stochastic, 1.1f, 0.05f);
}

TEST(StochasticRounding, ExactValuesAndSpecialsAreKept) {
  for (std::uint64_t i = 0; i < 1000; ++i) {
    EXPECT_EQ(stochastic_round_half(1.5f, 1, i).bits(), Half(1.5f).bits());
    EXPECT_EQ(stochastic_round_bfloat16(-2.0f, 1, i).bits(), BFloat16(-2.0f).bits());
    EXPECT_EQ(stochastic_round_half(-0.0f, 1, i).bits(), 0x8000);
    EXPECT_TRUE(stochastic_round_half(NAN, 1, i).is_nan());
    EXPECT_TRUE(stochastic_round_bfloat16(-NAN, 1, i).is_nan());
    EXPECT_TRUE(stochastic_round_bfloat16(-NAN, 1, i).signbit());
    EXPECT_EQ(stochastic_round_half(INFINITY, 1, i).bits(), 0x7C00);
    EXPECT_EQ(stochastic_round_bfloat16(-INFINITY, 1, i).bits(), 0xFF80);
    EXPECT_EQ(stochastic_round_half(1e6f, 1, i).bits(), 0x7C00);
    EXPECT_EQ(stochastic_round_half(65504.0f, 1, i).bits(), 0x7BFF);
    const auto beyond_max = stochastic_round_half(65520.0f, 1, i).bits();  // between max and "65536"
    EXPECT_TRUE(beyond_max == 0x7BFF || beyond_max == 0x7C00);
  }
}

TEST(StochasticRounding, ReproducibleFromSeedAndIndexWhateverTheThreadsOrSplit) {
  const std::size_t n = 300001;
  std::vector<float> src(n);
  for (std::size_t i = 0; i < n; ++i) src[i] = std::sin(static_cast<float>(i)) * 3.0f;
  std::vector<BFloat16> one(n), two(n), split(n);
  std::vector<Half> half_one(n), half_two(n);
  stochastic_round(src, std::span<BFloat16>(one), 99, 1000, 1);
  stochastic_round(src, std::span<BFloat16>(two), 99, 1000, 2);
  stochastic_round(std::span<const float>(src).first(n / 3), std::span<BFloat16>(split).first(n / 3), 99, 1000, 2);
  stochastic_round(std::span<const float>(src).subspan(n / 3), std::span<BFloat16>(split).subspan(n / 3), 99,
                   1000 + n / 3, 2);
  stochastic_round(src, std::span<Half>(half_one), 99, 0, 1);
  stochastic_round(src, std::span<Half>(half_two), 99, 0, 2);
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(one[i].bits(), two[i].bits()) << i;
    ASSERT_EQ(one[i].bits(), split[i].bits()) << i;
    ASSERT_EQ(one[i].bits(), stochastic_round_bfloat16(src[i], 99, 1000 + i).bits()) << i;
    ASSERT_EQ(half_one[i].bits(), half_two[i].bits()) << i;
  }
  std::vector<BFloat16> other_seed(n);
  stochastic_round(src, std::span<BFloat16>(other_seed), 100, 1000);
  std::size_t differ = 0;
  for (std::size_t i = 0; i < n; ++i) differ += other_seed[i].bits() != one[i].bits();
  EXPECT_GT(differ, n / 10);
}

TEST(StochasticRounding, MismatchedLengthsAreAnError) {
  std::vector<float> src(4);
  std::vector<Half> dst(3);
  EXPECT_THROW(stochastic_round(src, std::span<Half>(dst), 1), InvalidArgument);
}

TEST(Philox, MatchesPublishedKnownAnswer) {
  // Known-answer test from the Random123 distribution (kat_vectors): philox4x32 10 rounds,
  // counter 0, key 0.
  const auto r = philox4x32_10(0, 0, 0, 0, 0, 0);
  EXPECT_EQ(r.out[0], 0x6627e8d5u);
  EXPECT_EQ(r.out[1], 0xe169c58du);
  EXPECT_EQ(r.out[2], 0xbc57ac4cu);
  EXPECT_EQ(r.out[3], 0x9b00dbd8u);
  const auto s = philox4x32_10(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu);
  EXPECT_EQ(s.out[0], 0x408f276du);
  EXPECT_EQ(s.out[1], 0x41c83b0eu);
  EXPECT_EQ(s.out[2], 0xa20bc7c6u);
  EXPECT_EQ(s.out[3], 0x6d5451fdu);
}

}  // namespace
}  // namespace mpx::numeric
