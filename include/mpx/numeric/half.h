// Half: IEEE 754 binary16 (1 sign, 5 exponent, 10 fraction bits; max 65504), a storage type.
#pragma once

#include "mpx/numeric/detail/narrow_float.h"

namespace mpx::numeric {
using Half = NarrowFloat<detail::HalfFormat, std::uint16_t>;
static_assert(sizeof(Half) == 2);
}  // namespace mpx::numeric
