// Equality and printing of ConversionStats for the tests (max_abs compared bit for bit).
#pragma once

#include <bit>
#include <cstdint>
#include <ostream>

#include "mpx/numeric/convert.h"

namespace mpx::numeric {

inline bool same_stats(const ConversionStats& a, const ConversionStats& b) {
  return a.elements == b.elements && a.nan == b.nan && a.inf == b.inf && a.overflow == b.overflow &&
         a.underflow == b.underflow && a.subnormal == b.subnormal &&
         std::bit_cast<std::uint32_t>(a.max_abs) == std::bit_cast<std::uint32_t>(b.max_abs);
}

// gtest prints values through this in failure messages.
inline std::ostream& operator<<(std::ostream& os, const ConversionStats& s) {
  return os << "{elements " << s.elements << ", nan " << s.nan << ", inf " << s.inf << ", overflow " << s.overflow
            << ", underflow " << s.underflow << ", subnormal " << s.subnormal << ", max_abs " << s.max_abs << "}";
}

}  // namespace mpx::numeric
