// exp and tanh in FP32 written so that GCC vectorises the loops that call them (libm's are scalar calls):
// exp by Cody-Waite range reduction to [-ln2/2, ln2/2] and a degree-6 polynomial (within 2 ulp of
// std::exp over the range that does not overflow), tanh from it. For the engine's softmax and tanh-GELU,
// whose results are FP32 (or narrower) anyway. Internal to src/backend/cpu.
#pragma once

#include <bit>
#include <cstdint>

namespace mpx::backend::cpu {

inline float exp_fast(float x) {
  // Below -87.3 the result is subnormal or zero, above 88.7 infinite: clamp into the normal range (the
  // tails become 0 and FLT_MAX-ish, which softmax and tanh treat alike).
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // Round to the nearest integer by adding and removing 1.5 * 2^23 (vectorises, unlike a rounding call).
  constexpr float kRound = 12582912.0f;
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  float r = x - n * 0.693359375f;  // ln 2 in two parts: hi exact in 10 bits
  r = r - n * -2.12194440e-4f;
  float p = 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const auto bits = static_cast<std::uint32_t>(static_cast<std::int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

// tanh(u) = 1 - 2 / (exp(2u) + 1): absolute error below 1e-7 (what GELU's 0.5 (1 + tanh) needs).
inline float tanh_fast(float u) { return 1.0f - 2.0f / (exp_fast(2.0f * u) + 1.0f); }

}  // namespace mpx::backend::cpu
