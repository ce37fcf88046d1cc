// BFloat16: the top half of an IEEE binary32 (1 sign, 8 exponent, 7 fraction bits), a storage type.
#pragma once

#include "mpx/numeric/detail/narrow_float.h"

namespace mpx::numeric {
using BFloat16 = NarrowFloat<detail::BFloat16Format, std::uint16_t>;
static_assert(sizeof(BFloat16) == 2);
}  // namespace mpx::numeric
