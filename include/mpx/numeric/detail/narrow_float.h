// One storage class template behind Half, BFloat16, Float8E4M3 and Float8E5M2. These are storage types:
// arithmetic happens in float (the implicit conversion), never in the narrow format itself.
#pragma once

#include <bit>
#include <cstdint>
#include <limits>

#include "mpx/numeric/detail/rounding.h"

namespace mpx::numeric {

// What to do when a value is beyond the range of a format without infinities (FP8 E4M3FN).
enum class Fp8Overflow : std::uint8_t {
  saturate,  // clamp to +-max finite, as CUDA's __NV_SATFINITE (the default)
  nan,       // produce NaN, as CUDA's __NV_NOSAT
};

template <class FormatT, class StorageT>
class NarrowFloat {
 public:
  using Format = FormatT;
  using Storage = StorageT;

  NarrowFloat() = default;  // trivial: buffers of these are not zero-filled for nothing
  explicit NarrowFloat(float value, Fp8Overflow overflow = Fp8Overflow::saturate)
      : bits_(static_cast<Storage>(
            detail::encode_from_float<Format>(value, overflow == Fp8Overflow::saturate))) {}
  explicit NarrowFloat(double value, Fp8Overflow overflow = Fp8Overflow::saturate)
      : bits_(static_cast<Storage>(
            detail::encode_from_double_checked<Format>(value, overflow == Fp8Overflow::saturate))) {}

  static constexpr NarrowFloat from_bits(Storage bits) {
    NarrowFloat result;
    result.bits_ = bits;
    return result;
  }
  constexpr Storage bits() const { return bits_; }

  float to_float() const { return detail::decode_to_float<Format>(bits_); }
  operator float() const { return to_float(); }  // NOLINT: widening is exact, so implicit

  constexpr bool is_nan() const {
    if constexpr (Format::kHasInf) return (bits_ & kMagnitudeMask) > Format::kInfBits;
    else return (bits_ & kMagnitudeMask) == Format::kNanBits;
  }
  constexpr bool is_inf() const {
    if constexpr (Format::kHasInf) return (bits_ & kMagnitudeMask) == Format::kInfBits;
    else return false;
  }
  constexpr bool is_finite() const { return !is_nan() && !is_inf(); }
  constexpr bool is_subnormal() const {
    return (bits_ & kMagnitudeMask) != 0 && (bits_ & kExponentMask) == 0;
  }
  constexpr bool signbit() const { return (bits_ >> (Format::kWidth - 1)) != 0; }

  static constexpr Storage kMagnitudeMask = static_cast<Storage>((1u << (Format::kWidth - 1)) - 1);
  static constexpr Storage kExponentMask =
      static_cast<Storage>(((1u << Format::kExpBits) - 1) << Format::kManBits);

 private:
  Storage bits_;
};

}  // namespace mpx::numeric

// numeric_limits for every narrow format; the bit patterns behind them are tested.
template <class F, class S>
class std::numeric_limits<mpx::numeric::NarrowFloat<F, S>> {
  using T = mpx::numeric::NarrowFloat<F, S>;
  static constexpr T bits(unsigned b) { return T::from_bits(static_cast<S>(b)); }

 public:
  static constexpr bool is_specialized = true;
  static constexpr bool is_signed = true;
  static constexpr bool is_integer = false;
  static constexpr bool is_exact = false;
  static constexpr bool is_iec559 = F::kHasInf && F::kWidth == 16 && F::kExpBits == 5;
  static constexpr bool has_infinity = F::kHasInf;
  static constexpr bool has_quiet_NaN = true;
  static constexpr bool has_signaling_NaN = F::kHasInf;
  static constexpr std::float_denorm_style has_denorm = std::denorm_present;
  static constexpr bool has_denorm_loss = false;
  static constexpr std::float_round_style round_style = std::round_to_nearest;
  static constexpr int radix = 2;
  static constexpr int digits = F::kManBits + 1;
  static constexpr int max_exponent = (1 << F::kExpBits) - 1 - F::kBias + (F::kHasInf ? 0 : 1);
  static constexpr int min_exponent = 2 - F::kBias;

  static constexpr T min() { return bits(1u << F::kManBits); }  // smallest positive normal
  static constexpr T max() { return bits(F::kMaxFiniteBits); }
  static constexpr T lowest() { return bits(F::kMaxFiniteBits | (1u << (F::kWidth - 1))); }
  static constexpr T epsilon() { return bits(static_cast<unsigned>(F::kBias - F::kManBits) << F::kManBits); }
  static constexpr T round_error() { return bits(static_cast<unsigned>(F::kBias - 1) << F::kManBits); }
  static constexpr T denorm_min() { return bits(1u); }
  static constexpr T infinity() {
    if constexpr (F::kHasInf) return bits(F::kInfBits);
    else return bits(0);  // has_infinity is false: as for integers, the value is meaningless
  }
  static constexpr T quiet_NaN() {
    if constexpr (F::kHasInf) return bits(F::kInfBits | F::kQuietBit);
    else return bits(F::kNanBits);
  }
  static constexpr T signaling_NaN() {
    if constexpr (F::kHasInf) return bits(F::kInfBits | (F::kQuietBit >> 1));
    else return bits(F::kNanBits);
  }
};
