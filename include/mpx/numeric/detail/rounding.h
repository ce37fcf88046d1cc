// The scalar reference for every narrow-format conversion: plain, branchy code written for reading.
// All fast paths (SIMD, CUDA) must be bit-identical to it; the exhaustive tests check that.
// Rounding is to nearest, ties to even, with correct subnormals, from the exact double value.
#pragma once

#include <bit>
#include <cstdint>

#include "mpx/numeric/detail/formats.h"

namespace mpx::numeric::detail {

// NaN with the sign kept, the quiet bit set and the payload's leading bits kept (what F16C and
// AVX512_BF16 do), built from a float NaN's bits. E4M3FN has a single NaN pattern per sign.
template <class Format>
constexpr std::uint32_t nan_from_float_bits(std::uint32_t float_bits) {
  const std::uint32_t sign = (float_bits >> 31) << (Format::kWidth - 1);
  if constexpr (!Format::kHasInf) {
    return sign | Format::kNanBits;
  } else {
    const std::uint32_t payload = (float_bits & 0x007FFFFFu) >> (23 - Format::kManBits);
    return sign | Format::kInfBits | Format::kQuietBit | payload;
  }
}

// Rounds a non-NaN double to `Format`. `saturate` matters only for formats without infinities
// (E4M3FN): true clamps out-of-range values and infinities to the largest finite value, false gives NaN.
template <class Format>
constexpr std::uint32_t encode_from_double(double value, bool saturate = true) {
  constexpr int kMan = Format::kManBits;
  const std::uint64_t bits = std::bit_cast<std::uint64_t>(value);
  const std::uint32_t sign = static_cast<std::uint32_t>(bits >> 63) << (Format::kWidth - 1);
  const std::uint64_t magnitude = bits & 0x7FFFFFFFFFFFFFFFull;

  std::uint32_t overflow_result = 0;
  if constexpr (Format::kHasInf) {
    overflow_result = Format::kInfBits;
  } else {
    overflow_result = saturate ? Format::kMaxFiniteBits : Format::kNanBits;
  }
  if (magnitude >= 0x7FF0000000000000ull) return sign | overflow_result;  // infinity (NaN excluded)
  if (magnitude == 0) return sign;

  // value = significand * 2^(exponent - 52), significand with its implicit bit.
  const int biased = static_cast<int>(magnitude >> 52);
  std::uint64_t significand = magnitude & 0x000FFFFFFFFFFFFFull;
  int exponent = biased - 1023;
  if (biased == 0) {
    exponent = -1022;  // double subnormal: far below every target's range, rounds to zero below
  } else {
    significand |= 0x0010000000000000ull;
  }

  const int min_normal_exponent = 1 - Format::kBias;
  const bool subnormal = exponent < min_normal_exponent;
  // Bits of the double significand dropped to fit kMan fraction bits at this exponent.
  const int dropped = 52 - kMan + (subnormal ? (min_normal_exponent - exponent) : 0);
  std::uint64_t kept = 0;
  if (dropped < 64) {
    kept = significand >> dropped;
    const std::uint64_t remainder = significand & ((std::uint64_t{1} << dropped) - 1);
    const std::uint64_t halfway = std::uint64_t{1} << (dropped - 1);
    if (remainder > halfway || (remainder == halfway && (kept & 1))) ++kept;
  }
  // Adding (rather than or-ing) lets a carry out of the fraction bump the exponent field.
  std::uint64_t result = kept;
  if (!subnormal) {
    result = (static_cast<std::uint64_t>(exponent + Format::kBias) << kMan) + (kept - (std::uint64_t{1} << kMan));
  }
  if (result > Format::kMaxFiniteBits) return sign | overflow_result;
  return sign | static_cast<std::uint32_t>(result);
}

template <class Format>
constexpr std::uint32_t encode_from_float(float value, bool saturate = true) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return nan_from_float_bits<Format>(bits);
  return encode_from_double<Format>(static_cast<double>(value), saturate);
}

template <class Format>
constexpr std::uint32_t encode_from_double_checked(double value, bool saturate = true) {
  if (value != value) {  // NaN: keep sign and the payload's top bits, as for float
    const std::uint64_t bits = std::bit_cast<std::uint64_t>(value);
    const std::uint32_t float_bits = static_cast<std::uint32_t>(bits >> 63) << 31 | 0x7F800000u |
                                     static_cast<std::uint32_t>((bits >> 29) & 0x007FFFFFu) | 1u;
    return nan_from_float_bits<Format>(float_bits);
  }
  return encode_from_double<Format>(value, saturate);
}

// Exact widening to float. NaNs come back quiet with sign and payload, except that BFloat16 widens by a
// plain 16-bit shift (as every BF16 implementation does), which keeps a signalling NaN signalling.
template <class Format>
constexpr float decode_to_float(std::uint32_t bits) {
  constexpr int kMan = Format::kManBits;
  constexpr std::uint32_t kExpMask = (1u << Format::kExpBits) - 1;
  const std::uint32_t sign = (bits >> (Format::kWidth - 1)) & 1u;
  const std::uint32_t exponent_field = (bits >> kMan) & kExpMask;
  const std::uint32_t fraction = bits & ((1u << kMan) - 1);
  const std::uint32_t float_sign = sign << 31;

  if constexpr (Format::kWidth == 16 && Format::kExpBits == 8) {  // BFloat16
    return std::bit_cast<float>(bits << 16);
  }
  if constexpr (!Format::kHasInf) {
    if ((bits & 0x7Fu) == Format::kNanBits) return std::bit_cast<float>(float_sign | 0x7FC00000u);
  } else {
    if (exponent_field == kExpMask) {
      const std::uint32_t payload = fraction << (23 - kMan);
      return std::bit_cast<float>(float_sign | 0x7F800000u | payload | (fraction != 0 ? 0x00400000u : 0u));
    }
  }
  if (exponent_field == 0) {
    // Subnormal: fraction * 2^(1 - bias - kMan), exact in float for every narrow format.
    float magnitude = static_cast<float>(fraction);
    for (int i = 0; i < Format::kBias - 1 + kMan; ++i) magnitude *= 0.5f;
    return sign ? -magnitude : magnitude;
  }
  const std::uint32_t float_exponent = exponent_field - Format::kBias + 127;
  return std::bit_cast<float>(float_sign | (float_exponent << 23) | (fraction << (23 - kMan)));
}

}  // namespace mpx::numeric::detail
