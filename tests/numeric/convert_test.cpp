// Bulk conversion: every CPU path bit-identical to the scalar reference (values and statistics), on
// random data, special values, every narrow bit pattern, large streamed arrays and misaligned buffers;
// bad arguments are clear errors.
#include <gtest/gtest.h>

#include <immintrin.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "../support/conversion_stats.h"
#include "../support/reference_formats.h"
#include "mpx/core/error.h"
#include "mpx/numeric/convert.h"

namespace mpx::numeric {
namespace {

std::vector<float> mixed_floats(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> binade(-30, 20);
  const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 65504.0f, 65520.0f, 448.0f, 464.0f,
                            465.0f, 57344.0f, 61440.0f, 0x1p-24f, 0x1p-25f, 0x1p-9f, 0x1p-16f,
                            std::bit_cast<float>(0x00000001u), std::bit_cast<float>(0x807FFFFFu),
                            std::bit_cast<float>(0x7F800001u), std::numeric_limits<float>::max()};
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    switch (i % 4) {
      case 0: out[i] = std::bit_cast<float>(any_bits(rng)); break;
      case 1: out[i] = std::ldexp(normal(rng), binade(rng)); break;
      case 2: out[i] = specials[(i / 4) % std::size(specials)]; break;
      default: out[i] = normal(rng); break;
    }
  }
  return out;
}

struct Direction {
  DType from, to;
};
const Direction kDirections[] = {
    {DType::f32, DType::f16},  {DType::f32, DType::bf16},    {DType::f32, DType::f8_e4m3}, {DType::f32, DType::f8_e5m2},
    {DType::f16, DType::f32},  {DType::bf16, DType::f32},    {DType::f8_e4m3, DType::f32}, {DType::f8_e5m2, DType::f32},
    {DType::f16, DType::bf16}, {DType::bf16, DType::f16},
};

// Source bytes for a direction: floats as they are, narrow formats as random bit patterns (all of them).
std::vector<unsigned char> source_bytes(DType from, std::size_t n, unsigned seed) {
  std::vector<unsigned char> bytes(n * size_bytes(from));
  if (from == DType::f32) {
    const auto floats = mixed_floats(n, seed);
    std::memcpy(bytes.data(), floats.data(), bytes.size());
  } else {
    std::mt19937 rng(seed);
    for (auto& b : bytes) b = static_cast<unsigned char>(rng());
  }
  return bytes;
}

void expect_stats_equal(const ConversionStats& a, const ConversionStats& b, const std::string& what) {
  EXPECT_TRUE(same_stats(a, b)) << what << ": " << a << " vs " << b;
}

std::string describe(const Direction& d, CpuPath path, const char* extra = "") {
  return std::string(name(d.from)) + "->" + std::string(name(d.to)) + " on " + std::string(name(path)) + extra;
}

TEST(Convert, EveryPathMatchesScalarReferenceBitForBit) {
  for (const Direction& d : kDirections) {
    for (Fp8Overflow overflow : {Fp8Overflow::saturate, Fp8Overflow::nan}) {
      const std::size_t n = 100003;  // odd: exercises the tails
      const auto src = source_bytes(d.from, n, 7);
      std::vector<unsigned char> expected(n * size_bytes(d.to)), actual(expected.size());
      ConversionStats expected_stats, actual_stats;
      convert(src.data(), d.from, expected.data(), d.to, n, {CpuPath::scalar, 1, overflow}, &expected_stats);
      for (CpuPath path : available_cpu_paths()) {
        std::memset(actual.data(), 0xCD, actual.size());  // poison: every element must be written
        convert(src.data(), d.from, actual.data(), d.to, n, {path, 0, overflow}, &actual_stats);
        EXPECT_EQ(std::memcmp(actual.data(), expected.data(), actual.size()), 0) << describe(d, path);
        expect_stats_equal(actual_stats, expected_stats, describe(d, path));
        // Without statistics the values are the same.
        std::memset(actual.data(), 0xCD, actual.size());
        convert(src.data(), d.from, actual.data(), d.to, n, {path, 0, overflow});
        EXPECT_EQ(std::memcmp(actual.data(), expected.data(), actual.size()), 0) << describe(d, path, " no stats");
      }
    }
  }
}

TEST(Convert, StatisticsCountWhatHappenedToTheValues) {
  const std::vector<float> src = {1.0f, NAN, INFINITY, -INFINITY, 70000.0f, -1e6f, 1e-9f, -1e-30f, 1e-6f, 0.0f, -3.0f};
  std::vector<Half> dst(src.size());
  ConversionStats s;
  convert(src, std::span<Half>(dst), {}, &s);
  EXPECT_EQ(s.elements, src.size());
  EXPECT_EQ(s.nan, 1u);
  EXPECT_EQ(s.inf, 2u);
  EXPECT_EQ(s.overflow, 2u);   // 70000 and -1e6
  EXPECT_EQ(s.underflow, 2u);  // 1e-9 and -1e-30 became zero (0.0 itself is not counted)
  EXPECT_EQ(s.subnormal, 1u);  // 1e-6 is a Half subnormal
  EXPECT_EQ(s.max_abs, INFINITY);

  std::vector<Float8E4M3> fp8(src.size());
  convert(src, std::span<Float8E4M3>(fp8), {}, &s);
  EXPECT_EQ(s.overflow, 2u);
  EXPECT_EQ(static_cast<float>(fp8[4]), 448.0f);  // saturated
  EXPECT_EQ(static_cast<float>(fp8[2]), 448.0f);
}

TEST(Convert, LargeArraysUseStreamingStoresAndThreadsWithSameResult) {
  const std::size_t n = (std::size_t{40} << 20) / 2 + 77;  // > 16 MiB of Half output, odd length
  const auto src = mixed_floats(n, 11);
  std::vector<std::uint16_t> expected(n), actual(n + 1);
  ConversionStats expected_stats, actual_stats;
  convert(src.data(), DType::f32, expected.data(), DType::f16, n, {CpuPath::scalar, 1}, &expected_stats);
  // Offset by one element so the destination starts off a 64-byte boundary.
  for (CpuPath path : available_cpu_paths()) {
    for (int threads : {1, 2, 3}) {
      convert(src.data(), DType::f32, actual.data() + 1, DType::f16, n, {path, threads}, &actual_stats);
      EXPECT_EQ(std::memcmp(actual.data() + 1, expected.data(), n * 2), 0) << name(path) << " threads " << threads;
      expect_stats_equal(actual_stats, expected_stats, std::string(name(path)));
    }
  }
}

TEST(Convert, ResultsDoNotDependOnTheCallersFloatingPointMode) {
  const auto src = mixed_floats(4096, 3);
  const DType targets[] = {DType::f16, DType::bf16, DType::f8_e4m3, DType::f8_e5m2};
  std::vector<std::vector<std::uint16_t>> expected;
  for (DType to : targets) {
    expected.emplace_back(src.size());
    convert(src.data(), DType::f32, expected.back().data(), to, src.size(), {CpuPath::scalar});
  }
  std::vector<std::uint16_t> actual(src.size());
  const unsigned saved = _mm_getcsr();
  // FTZ and DAZ (as some ML code sets them) and rounding towards +infinity.
  const unsigned hostile = (saved & ~0x6000u) | 0x8040u | 0x4000u;
  _mm_setcsr(hostile);
  for (CpuPath path : available_cpu_paths()) {
    for (std::size_t t = 0; t < std::size(targets); ++t) {
      convert(src.data(), DType::f32, actual.data(), targets[t], src.size(), {path});
      EXPECT_EQ(std::memcmp(actual.data(), expected[t].data(), src.size() * size_bytes(targets[t])), 0)
          << name(path) << " " << name(targets[t]);
    }
  }
  const unsigned after = _mm_getcsr();
  _mm_setcsr(saved);
  EXPECT_EQ(after, hostile) << "the caller's mode must be restored";
}

TEST(Convert, SixteenBitFormatsConvertThroughOneRounding) {
  for (unsigned bits = 0; bits < 65536; ++bits) {
    const auto h = Half::from_bits(static_cast<std::uint16_t>(bits));
    const auto b = BFloat16::from_bits(static_cast<std::uint16_t>(bits));
    BFloat16 b_out;
    Half h_out;
    convert(std::span<const Half>(&h, 1), std::span<BFloat16>(&b_out, 1));
    convert(std::span<const BFloat16>(&b, 1), std::span<Half>(&h_out, 1));
    if (!h.is_nan()) EXPECT_EQ(b_out.bits(), mpx::testing::bfloat16_reference(static_cast<float>(h))) << bits;
    else EXPECT_TRUE(b_out.is_nan());
    if (!b.is_nan()) EXPECT_EQ(h_out.bits(), mpx::testing::half_reference(static_cast<float>(b))) << bits;
    else EXPECT_TRUE(h_out.is_nan());
  }
}

TEST(Convert, EmptyInputIsFine) {
  ConversionStats s;
  s.nan = 5;
  convert(nullptr, DType::f32, nullptr, DType::f16, 0, {}, &s);
  EXPECT_EQ(s.nan, 0u);
  EXPECT_EQ(s.elements, 0u);
}

TEST(Convert, BadArgumentsAreClearErrors) {
  std::vector<float> src(8, 1.0f);
  std::vector<Half> short_dst(7);
  EXPECT_THROW(convert(src, std::span<Half>(short_dst)), InvalidArgument);
  EXPECT_THROW(convert(nullptr, DType::f32, short_dst.data(), DType::f16, 3), InvalidArgument);
  EXPECT_THROW(convert(src.data(), DType::f32, nullptr, DType::f16, 3), InvalidArgument);
  EXPECT_THROW(convert(src.data(), DType::f32, src.data(), DType::f16, 8), InvalidArgument);  // overlap
  EXPECT_THROW(convert(src.data(), DType::f16, short_dst.data(), DType::f8_e4m3, 3), InvalidArgument);
  EXPECT_THROW(convert(src.data(), DType::f32, short_dst.data(), DType::f16, 3, {CpuPath::scalar, -1}),
               InvalidArgument);
  try {
    convert(src.data(), DType::i32, short_dst.data(), DType::f16, 3);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("no conversion from i32 to f16"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_cpu_path("sse9"), InvalidArgument);
}

TEST(Convert, PathsAreReportedConsistently) {
  const auto paths = available_cpu_paths();
  ASSERT_FALSE(paths.empty());
  EXPECT_EQ(paths.front(), CpuPath::scalar);
  EXPECT_EQ(paths.back(), best_cpu_path());
  for (CpuPath p : paths) EXPECT_EQ(parse_cpu_path(name(p)), p);
}

}  // namespace
}  // namespace mpx::numeric
