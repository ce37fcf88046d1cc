// What the numbers in one tensor are doing: non-finite, zero, subnormal and beyond-FP16 counts, the
// largest magnitude, and a log2-exponent histogram (one bucket per binade between 2^kMinBinade and
// 2^(kMaxBinade+1), plus an underflow bucket holding zeros and smaller values and an overflow bucket
// holding larger values and infinities). NaNs are counted, not bucketed: histogram total + nan = elements.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "mpx/numeric/dtype.h"

namespace mpx::telemetry {

inline constexpr double kFp16Max = 65504.0;
inline constexpr int kFp16MinNormalBinade = -14;  // 2^-14 = 6.1e-5, FP16's smallest normal

struct TensorStats {
  static constexpr int kMinBinade = -48, kMaxBinade = 47;
  static constexpr int kBuckets = kMaxBinade - kMinBinade + 3;  // + underflow (first) and overflow (last)

  std::uint64_t elements = 0, nan = 0, pos_inf = 0, neg_inf = 0, zeros = 0;
  std::uint64_t subnormals = 0;   // subnormal in the tensor's own dtype
  std::uint64_t beyond_fp16 = 0;  // finite values with |x| > 65504
  double max_abs = 0;             // over finite values
  double min = 0, max = 0;        // finite range (0, 0 when there is no finite value)
  std::array<std::uint64_t, kBuckets> histogram{};

  std::uint64_t nonfinite() const { return nan + pos_inf + neg_inf; }
  // The binade bucket index of 2^b (clamped into the under/overflow buckets).
  static int bucket_of_binade(int binade);
  // Values with |x| < 2^binade that are not zero (a binade boundary; the underflow bucket counts as below).
  std::uint64_t nonzero_below(int binade) const;
  // Binades between the largest finite magnitude and the FP16 maximum (negative: beyond it; +inf: all zero).
  double fp16_headroom_binades() const;
  void merge(const TensorStats& other);
};

// One pass over `count` elements of f32, bf16 or f16 data (multi-threaded for large tensors).
TensorStats compute_stats(const void* data, DType dtype, std::size_t count);

}  // namespace mpx::telemetry
