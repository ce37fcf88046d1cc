// Branch-free, one-element conversions: the form the SIMD CPU kernels (auto-vectorised per target) and
// the CUDA kernels share. Deliberately a different algorithm from the scalar reference
// (mpx/numeric/detail/rounding.h), which works from the exact double; the tests hold them bit-identical.
//
// Include this file inside a namespace unique to the including translation unit (no include guard on
// purpose): functions compiled for one instruction set must never be merged by the linker into code that
// runs on another. Requires <cstdint> and mpx/numeric/detail/formats.h beforehand.

#if defined(__CUDACC__)
#define MPX_LANE __host__ __device__ __forceinline__ static
#else
#define MPX_LANE __attribute__((always_inline)) static inline
#endif

using ::mpx::numeric::detail::BFloat16Format;
using ::mpx::numeric::detail::E4M3Format;
using ::mpx::numeric::detail::E5M2Format;
using ::mpx::numeric::detail::HalfFormat;

MPX_LANE std::uint32_t float_bits_of(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  return __builtin_bit_cast(std::uint32_t, value);
#endif
}

MPX_LANE float float_from_bits(std::uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  return __builtin_bit_cast(float, bits);
#endif
}

// float bits -> Format bits, round to nearest even. `saturate` only matters for E4M3.
template <class Format>
MPX_LANE std::uint32_t narrow_lane(std::uint32_t u, bool saturate) {
  constexpr std::uint32_t kMan = Format::kManBits;
  constexpr std::uint32_t kNormalFloatExponent = 128 - Format::kBias;  // float exponent of Format's min normal
  const std::uint32_t sign = (u >> 31) << (Format::kWidth - 1);
  const std::uint32_t a = u & 0x7FFFFFFFu;
  const std::uint32_t fe = a >> 23;
  const std::uint32_t extra = fe < kNormalFloatExponent ? kNormalFloatExponent - fe : 0u;
  const std::uint32_t significand = (a & 0x007FFFFFu) | (fe != 0 ? 0x00800000u : 0u);
  std::uint32_t shift = 23 - kMan + extra;
  shift = shift > 31 ? 31 : shift;  // everything shifted that far rounds to zero
  // Round to nearest even by adding just under half a unit, plus the kept lowest bit (no overflow: the
  // significand is below 2^24). Written without comparisons so that GCC vectorises it.
  const std::uint32_t rounded = (significand + ((1u << (shift - 1)) - 1) + ((significand >> shift) & 1u)) >> shift;
  // A carry out of the fraction lands in the exponent field because the parts are added, not or-ed.
  const std::uint32_t base = extra == 0 ? ((fe - (127 - Format::kBias)) << kMan) - (1u << kMan) : 0u;
  std::uint32_t result = base + rounded;

  std::uint32_t overflow_result;
  std::uint32_t nan_result;
  if constexpr (Format::kHasInf) {
    overflow_result = Format::kInfBits;
    nan_result = Format::kInfBits | Format::kQuietBit | ((a & 0x007FFFFFu) >> (23 - kMan));
  } else {
    overflow_result = saturate ? Format::kMaxFiniteBits : Format::kNanBits;
    nan_result = Format::kNanBits;
  }
  result = a >= Format::kOverflowThreshold ? overflow_result : result;  // infinities included
  result = a > 0x7F800000u ? nan_result : result;
  return sign | result;
}

MPX_LANE std::uint32_t bfloat16_narrow_lane(std::uint32_t u) {
  const std::uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const std::uint32_t quiet_nan = (u >> 16) | BFloat16Format::kQuietBit;
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded;
}

// Format bits -> float bits, exact.
template <class Format>
MPX_LANE std::uint32_t widen_lane(std::uint32_t h) {
  constexpr std::uint32_t kMan = Format::kManBits;
  constexpr std::uint32_t kExpMask = (1u << Format::kExpBits) - 1;
  constexpr std::uint32_t kMagnitudeMask = (1u << (Format::kWidth - 1)) - 1;
  // 2^(1 - bias - kMan): the value of the lowest fraction bit of a subnormal.
  constexpr float kSubnormalUnit = Format::kBias + kMan - 1 == 24   ? 0x1p-24f
                                   : Format::kBias + kMan - 1 == 16 ? 0x1p-16f
                                                                    : 0x1p-9f;
  static_assert(Format::kBias + kMan - 1 == 24 || Format::kBias + kMan - 1 == 16 ||
                Format::kBias + kMan - 1 == 9);
  const std::uint32_t sign = (h >> (Format::kWidth - 1)) << 31;
  const std::uint32_t a = h & kMagnitudeMask;
  const std::uint32_t exponent = a >> kMan;
  const std::uint32_t fraction = a & ((1u << kMan) - 1);
  const std::uint32_t normal = ((exponent + 127 - Format::kBias) << 23) | (fraction << (23 - kMan));
  const std::uint32_t subnormal = float_bits_of(static_cast<float>(static_cast<std::int32_t>(fraction)) * kSubnormalUnit);
  std::uint32_t result = exponent == 0 ? subnormal : normal;
  if constexpr (Format::kHasInf) {
    const std::uint32_t special = 0x7F800000u | (fraction << (23 - kMan)) | (fraction != 0 ? 0x00400000u : 0u);
    result = exponent == kExpMask ? special : result;
  } else {
    result = a == Format::kNanBits ? 0x7FC00000u : result;
  }
  return sign | result;
}

MPX_LANE std::uint32_t bfloat16_widen_lane(std::uint32_t h) { return h << 16; }

// Per-block statistics, in 32-bit counters so that the loops vectorise; the caller widens them.
struct LaneStats {
  std::uint32_t nan = 0, inf = 0, overflow = 0, underflow = 0, subnormal = 0;
  std::uint32_t max_abs_bits = 0;  // float bits of the largest |x| among non-NaN values
};

// Statistics of a narrowing: input float bits `u`, output Format bits `r`.
template <class Format>
MPX_LANE void narrow_stats_lane(std::uint32_t u, std::uint32_t r, LaneStats& s) {
  constexpr std::uint32_t kMagnitudeMask = (1u << (Format::kWidth - 1)) - 1;
  constexpr std::uint32_t kExpField = ((1u << Format::kExpBits) - 1) << Format::kManBits;
  const std::uint32_t a = u & 0x7FFFFFFFu;
  const std::uint32_t out = r & kMagnitudeMask;
  const std::uint32_t is_nan = a > 0x7F800000u;
  const std::uint32_t is_finite = a < 0x7F800000u;
  s.nan += is_nan;
  s.inf += a == 0x7F800000u;
  s.overflow += is_finite & (a >= Format::kOverflowThreshold);
  s.underflow += (a != 0) & (out == 0);
  s.subnormal += (out != 0) & ((out & kExpField) == 0);
  const std::uint32_t candidate = is_nan ? 0u : a;
  s.max_abs_bits = candidate > s.max_abs_bits ? candidate : s.max_abs_bits;
}

// Statistics of a widening, from the output float bits alone (nothing overflows or underflows).
MPX_LANE void widen_stats_lane(std::uint32_t f, LaneStats& s) {
  const std::uint32_t a = f & 0x7FFFFFFFu;
  const std::uint32_t is_nan = a > 0x7F800000u;
  s.nan += is_nan;
  s.inf += a == 0x7F800000u;
  s.subnormal += (a != 0) & (a < 0x00800000u);
  const std::uint32_t candidate = is_nan ? 0u : a;
  s.max_abs_bits = candidate > s.max_abs_bits ? candidate : s.max_abs_bits;
}
