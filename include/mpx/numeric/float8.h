// The two OCP 8-bit float formats: E4M3FN (no infinities, max 448; saturating by default) and
// E5M2 (IEEE-like, max 57344). Storage types: convert to float for arithmetic.
#pragma once

#include "mpx/numeric/detail/narrow_float.h"

namespace mpx::numeric {
using Float8E4M3 = NarrowFloat<detail::E4M3Format, std::uint8_t>;
using Float8E5M2 = NarrowFloat<detail::E5M2Format, std::uint8_t>;
static_assert(sizeof(Float8E4M3) == 1 && sizeof(Float8E5M2) == 1);
}  // namespace mpx::numeric
