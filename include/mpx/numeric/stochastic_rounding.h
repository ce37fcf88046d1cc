// Stochastic rounding float -> BFloat16 / Half: unbiased (E[round(x)] = x), and reproducible from
// (seed, index) alone through a counter-based generator, whatever the thread count or device.
// Element i of a bulk call uses index `first_index + i`, so a tensor split across calls or devices
// rounds exactly as one call would.
#pragma once

#include <cstdint>
#include <span>

#include "mpx/numeric/bfloat16.h"
#include "mpx/numeric/half.h"

namespace mpx::numeric {

BFloat16 stochastic_round_bfloat16(float value, std::uint64_t seed, std::uint64_t index);
Half stochastic_round_half(float value, std::uint64_t seed, std::uint64_t index);

// `threads` = 0: automatic. Throws InvalidArgument on spans of different lengths.
void stochastic_round(std::span<const float> src, std::span<BFloat16> dst, std::uint64_t seed,
                      std::uint64_t first_index = 0, int threads = 0);
void stochastic_round(std::span<const float> src, std::span<Half> dst, std::uint64_t seed,
                      std::uint64_t first_index = 0, int threads = 0);

}  // namespace mpx::numeric
