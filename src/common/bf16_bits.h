// BF16 as raw bits (the top half of a binary32) for the engine's own vectorisable loops: widening is a
// shift, narrowing rounds to nearest-even with a branch-free NaN rule. Internal to src/.
#pragma once

#include <bit>
#include <cstdint>

namespace mpx::detail {

using bf16_bits = std::uint16_t;

inline float widen_bf16(bf16_bits v) { return std::bit_cast<float>(static_cast<std::uint32_t>(v) << 16); }

// Round to nearest, ties to even; a NaN stays a (quiet) NaN with its sign, infinities stay infinite.
inline bf16_bits round_to_bf16(float v) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(v);
  const std::uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const std::uint32_t quiet_nan = (u >> 16) | 0x40u;
  return static_cast<bf16_bits>((u & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded);
}

}  // namespace mpx::detail
