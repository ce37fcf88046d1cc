// Bit-level descriptions of the narrow floating-point formats: the single source of the constants that
// the scalar reference (rounding.h), the SIMD kernels and the CUDA kernels all use.
// Data only (no functions), so it is safe to include from code compiled for any instruction set.
#pragma once

#include <cstdint>

namespace mpx::numeric::detail {

// A binary floating-point format with an implicit leading bit, subnormals and a sign bit.
// kOverflowThreshold: the smallest float bit pattern (sign cleared) that rounds beyond the largest finite
// value under round-to-nearest-even, i.e. overflows. Checked against the reference in the tests.
struct HalfFormat {
  static constexpr int kWidth = 16, kExpBits = 5, kManBits = 10, kBias = 15;
  static constexpr bool kHasInf = true;
  static constexpr std::uint32_t kMaxFiniteBits = 0x7BFF, kInfBits = 0x7C00, kQuietBit = 0x0200;
  static constexpr std::uint32_t kOverflowThreshold = 0x477FF000;  // 65520.0f
};

struct BFloat16Format {
  static constexpr int kWidth = 16, kExpBits = 8, kManBits = 7, kBias = 127;
  static constexpr bool kHasInf = true;
  static constexpr std::uint32_t kMaxFiniteBits = 0x7F7F, kInfBits = 0x7F80, kQuietBit = 0x0040;
  static constexpr std::uint32_t kOverflowThreshold = 0x7F7F8000;  // max bf16 + half an ulp
};

// OCP FP8 E5M2: IEEE-like, max 57344, has infinities and NaNs.
struct E5M2Format {
  static constexpr int kWidth = 8, kExpBits = 5, kManBits = 2, kBias = 15;
  static constexpr bool kHasInf = true;
  static constexpr std::uint32_t kMaxFiniteBits = 0x7B, kInfBits = 0x7C, kQuietBit = 0x02;
  static constexpr std::uint32_t kOverflowThreshold = 0x47700000;  // 61440.0f
};

// OCP FP8 E4M3FN: no infinities; S.1111.111 is the only NaN; max 448 (S.1111.110).
// 464 lies halfway between 448 (even mantissa) and the missing 480, so it rounds to 448.
struct E4M3Format {
  static constexpr int kWidth = 8, kExpBits = 4, kManBits = 3, kBias = 7;
  static constexpr bool kHasInf = false;
  static constexpr std::uint32_t kMaxFiniteBits = 0x7E, kNanBits = 0x7F;
  static constexpr std::uint32_t kOverflowThreshold = 0x43E80001;  // the float just above 464.0f
};

}  // namespace mpx::numeric::detail
