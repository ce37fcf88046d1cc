#include "mpx/numeric/stochastic_rounding.h"

#include <omp.h>

#include <bit>
#include <string>

#include "mpx/core/error.h"
#include "mpx/numeric/detail/formats.h"
#include "mpx/numeric/philox.h"

namespace mpx::numeric {

namespace {
namespace lanes {
#include "kernels/lanes.inl"
#include "kernels/stochastic_lanes.inl"
}  // namespace lanes

template <class Narrow, class Lane>
void round_all(std::span<const float> src, std::span<Narrow> dst, std::uint64_t seed, std::uint64_t first_index,
               int threads, Lane lane) {
  if (src.size() != dst.size()) {
    throw InvalidArgument("stochastic_round: source has " + std::to_string(src.size()) +
                          " elements but destination has " + std::to_string(dst.size()));
  }
  if (threads < 0) throw InvalidArgument("stochastic_round: threads must be >= 0 (0 = automatic)");
  const auto n = static_cast<std::int64_t>(src.size());
  const int team = n < (1 << 16) ? 1 : (threads > 0 ? threads : omp_get_max_threads());
#pragma omp parallel for num_threads(team) schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint64_t index = first_index + static_cast<std::uint64_t>(i);
    const auto bits = lane(std::bit_cast<std::uint32_t>(src[i]), random_u32(seed, index));
    dst[i] = Narrow::from_bits(static_cast<std::uint16_t>(bits));
  }
}
}  // namespace

BFloat16 stochastic_round_bfloat16(float value, std::uint64_t seed, std::uint64_t index) {
  return BFloat16::from_bits(static_cast<std::uint16_t>(
      lanes::bfloat16_stochastic_lane(std::bit_cast<std::uint32_t>(value), random_u32(seed, index))));
}

Half stochastic_round_half(float value, std::uint64_t seed, std::uint64_t index) {
  return Half::from_bits(static_cast<std::uint16_t>(
      lanes::half_stochastic_lane(std::bit_cast<std::uint32_t>(value), random_u32(seed, index))));
}

void stochastic_round(std::span<const float> src, std::span<BFloat16> dst, std::uint64_t seed,
                      std::uint64_t first_index, int threads) {
  round_all(src, dst, seed, first_index, threads, lanes::bfloat16_stochastic_lane);
}

void stochastic_round(std::span<const float> src, std::span<Half> dst, std::uint64_t seed,
                      std::uint64_t first_index, int threads) {
  round_all(src, dst, seed, first_index, threads, lanes::half_stochastic_lane);
}

}  // namespace mpx::numeric
