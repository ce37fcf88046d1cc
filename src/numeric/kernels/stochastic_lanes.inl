// Stochastic rounding of one float, given a uniform 32-bit random number: rounds away from zero with
// probability equal to the distance to the value below, as a fraction of the gap, so E[result] = x.
// Integer-only and shared by the CPU and CUDA paths. Include after lanes.inl, inside the same namespace.

// BFloat16: adding 16 random bits below the kept ones carries with exactly the right probability.
MPX_LANE std::uint32_t bfloat16_stochastic_lane(std::uint32_t u, std::uint32_t random) {
  const std::uint32_t quiet_nan = (u >> 16) | BFloat16Format::kQuietBit;
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return quiet_nan;
  return (u + (random >> 16)) >> 16;
}

// Half: truncate, then step up by one unit with probability remainder / 2^shift. For shifts beyond 32
// (inputs below 2^-32) the probability is truncated to a multiple of 2^-32: a bias under 2^-32 of an ulp.
MPX_LANE std::uint32_t half_stochastic_lane(std::uint32_t u, std::uint32_t random) {
  constexpr std::uint32_t kNormalFloatExponent = 128 - HalfFormat::kBias;
  const std::uint32_t sign = (u >> 31) << 15;
  const std::uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return sign | HalfFormat::kInfBits | HalfFormat::kQuietBit | ((a & 0x007FFFFFu) >> 13);
  if (a >= 0x47800000u) return sign | HalfFormat::kInfBits;  // |x| >= 65536: beyond max + ulp, or inf
  const std::uint32_t fe = a >> 23;
  const std::uint32_t extra = fe < kNormalFloatExponent ? kNormalFloatExponent - fe : 0u;
  const std::uint64_t significand = (a & 0x007FFFFFu) | (fe != 0 ? 0x00800000u : 0u);
  const std::uint32_t shift = 13 + extra;
  const std::uint64_t kept = shift >= 25 ? 0 : significand >> shift;  // significand < 2^24
  const std::uint64_t remainder = shift >= 25 ? significand : significand & ((std::uint64_t{1} << shift) - 1);
  bool up;
  if (shift <= 32) {
    up = (static_cast<std::uint64_t>(random) >> (32 - shift)) < remainder;
  } else {
    const std::uint64_t threshold = shift - 32 >= 64 ? 0 : remainder >> (shift - 32);
    up = random < threshold;
  }
  const std::uint32_t base = extra == 0 ? ((fe - (127 - HalfFormat::kBias)) << 10) - (1u << 10) : 0u;
  return sign | (base + static_cast<std::uint32_t>(kept) + (up ? 1u : 0u));
}
