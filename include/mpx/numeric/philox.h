// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a counter-based
// generator, so the random number for element i depends only on (seed, i), never on threads or device.
#pragma once

#include <array>
#include <cstdint>

#include "mpx/numeric/detail/host_device.h"

namespace mpx::numeric {

struct Philox4x32 {
  std::uint32_t out[4];
};

MPX_HOST_DEVICE constexpr Philox4x32 philox4x32_10(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2,
                                                   std::uint32_t c3, std::uint32_t k0, std::uint32_t k1) {
  constexpr std::uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(kMul0) * c0;
    const std::uint64_t p1 = static_cast<std::uint64_t>(kMul1) * c2;
    const auto hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const auto hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    const std::uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// The uniform 32-bit random number of element `index` in stream `seed`: each Philox call gives four,
// for indices 4k .. 4k+3.
MPX_HOST_DEVICE constexpr std::uint32_t random_u32(std::uint64_t seed, std::uint64_t index) {
  const std::uint64_t block = index >> 2;
  const Philox4x32 r = philox4x32_10(static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32), 0,
                                     0, static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
  return r.out[index & 3];
}

}  // namespace mpx::numeric
