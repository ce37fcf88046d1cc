// Values of a tensor stored in any mpx dtype, widened to double for statistics and comparisons.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "mpx/numeric/dtype.h"

namespace mpx::io {

// The element values of `bytes` (dtype `dtype`), widened exactly to double.
std::vector<double> widen_to_double(std::span<const std::byte> bytes, DType dtype);

struct ValueSummary {
  std::uint64_t elements = 0, nonfinite = 0;
  double min = 0, max = 0, mean = 0;  // over finite values (0 when there are none)
};
ValueSummary summarize(std::span<const double> values);

}  // namespace mpx::io
