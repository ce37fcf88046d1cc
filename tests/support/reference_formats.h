// Independent references for the tests, written apart from the code under test: a decoder built on
// ldexp, and encoders built on the compiler's _Float16, plain integer rounding, and nearbyint.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace mpx::testing {

struct FormatSpec {
  int exp_bits, man_bits, bias;
  bool ieee_specials;  // all-ones exponent means inf/NaN (false: E4M3FN, only S.1111.111 is NaN)
  double max_finite;
};

inline constexpr FormatSpec kHalfSpec{5, 10, 15, true, 65504.0};
inline constexpr FormatSpec kBFloat16Spec{8, 7, 127, true, 3.3895313892515355e38};
inline constexpr FormatSpec kE4M3Spec{4, 3, 7, false, 448.0};
inline constexpr FormatSpec kE5M2Spec{5, 2, 15, true, 57344.0};

// sign * mantissa * 2^exponent through ldexp; NaN and infinities by the format's rules.
inline double decode_reference(std::uint32_t bits, const FormatSpec& f) {
  const int width = 1 + f.exp_bits + f.man_bits;
  const bool negative = (bits >> (width - 1)) & 1u;
  const std::uint32_t exponent = (bits >> f.man_bits) & ((1u << f.exp_bits) - 1);
  const std::uint32_t mantissa = bits & ((1u << f.man_bits) - 1);
  const std::uint32_t all_ones = (1u << f.exp_bits) - 1;
  double magnitude;
  if (f.ieee_specials && exponent == all_ones) {
    magnitude = mantissa == 0 ? INFINITY : NAN;
  } else if (!f.ieee_specials && exponent == all_ones && mantissa == (1u << f.man_bits) - 1) {
    magnitude = NAN;
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<double>(mantissa), 1 - f.bias - f.man_bits);
  } else {
    magnitude = std::ldexp(static_cast<double>(mantissa + (1u << f.man_bits)),
                           static_cast<int>(exponent) - f.bias - f.man_bits);
  }
  return negative ? -magnitude : magnitude;
}

// The exactly rounded value of x in the format (ties to even) with an unbounded exponent range, through
// the FPU's round-to-nearest-even nearbyint on an exactly scaled double. Returns +-inf past the
// representable range (the caller decides what the format does then).
inline double round_reference(double x, const FormatSpec& f) {
  if (std::isnan(x) || std::isinf(x) || x == 0.0) return x;
  int e2 = 0;
  std::frexp(std::fabs(x), &e2);  // |x| = m * 2^e2, m in [0.5, 1)
  const int min_exponent = 1 - f.bias;
  const int exponent = std::max(e2 - 1, min_exponent);
  const double scaled = std::ldexp(std::fabs(x), f.man_bits - exponent);
  const double rounded = std::ldexp(std::nearbyint(scaled), exponent - f.man_bits);
  const double magnitude = rounded > f.max_finite ? INFINITY : rounded;
  return std::signbit(x) ? -magnitude : magnitude;
}

// Float -> BFloat16 by integer rounding of the dropped half-word (a different formulation from the
// library's add-and-shift).
inline std::uint16_t bfloat16_reference(float x) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
  std::uint32_t upper = bits >> 16;
  const std::uint32_t lower = bits & 0xFFFFu;
  if (lower > 0x8000u || (lower == 0x8000u && (upper & 1u) != 0)) ++upper;
  return static_cast<std::uint16_t>(upper);
}

// The compiler's own float -> _Float16 conversion: libgcc's soft-float routine, exact but ~125 ns a call.
inline std::uint16_t half_reference(float x) {
  const _Float16 h = static_cast<_Float16>(x);
  return std::bit_cast<std::uint16_t>(h);
}

// The same conversion as the compiler emits it for F16C hardware (vcvtps2ph), for the 2^32-input sweeps;
// call only when the CPU has F16C.
__attribute__((target("f16c"))) inline void half_reference_f16c(const float* x, std::uint16_t* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = std::bit_cast<std::uint16_t>(static_cast<_Float16>(x[i]));
}

// The compiler's F16C widening (vcvtph2ps) of Half bits, for the sweeps' statistics.
__attribute__((target("f16c"))) inline void half_widen_f16c(const std::uint16_t* bits, float* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(std::bit_cast<_Float16>(bits[i]));
}

// Round-to-nearest-even through the FPU's own double addition: adding 1.5 * 2^(e - man_bits + 52), whose
// ulp is the target's unit 2^(e - man_bits), rounds |x| to a multiple of that unit, then subtracting it
// back is exact. Same contract as round_reference, ~20x faster. e = max(exponent of |x|, min exponent).
inline double round_reference_fast(float x, const FormatSpec& f) {
  if (std::isnan(x) || std::isinf(x) || x == 0.0f) return x;
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(x) & 0x7FFFFFFFu;
  const int exponent = std::max(static_cast<int>(bits >> 23) - 127, 1 - f.bias);  // float subnormals: below any target
  const int magic_exponent = exponent - f.man_bits + 52;  // 1.5 * 2^magic_exponent, built from its bits
  const double magic = std::bit_cast<double>((static_cast<std::uint64_t>(magic_exponent + 1023) << 52) |
                                             (std::uint64_t{1} << 51));
  const double rounded = (static_cast<double>(std::fabs(x)) + magic) - magic;
  const double magnitude = rounded > f.max_finite ? INFINITY : rounded;
  return std::signbit(x) ? -magnitude : magnitude;
}

inline bool same_nan_and_sign(double a, double b) {
  return std::isnan(a) && std::isnan(b) && std::signbit(a) == std::signbit(b);
}

}  // namespace mpx::testing
