#include "mpx/telemetry/tensor_stats.h"

#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "../common/vector_clones.h"
#include "mpx/core/error.h"
#include "mpx/numeric/half.h"

namespace mpx::telemetry {

int TensorStats::bucket_of_binade(int binade) { return std::clamp(binade - kMinBinade + 1, 0, kBuckets - 1); }

std::uint64_t TensorStats::nonzero_below(int binade) const {
  std::uint64_t n = 0;
  const int last = bucket_of_binade(binade);  // buckets before it hold |x| < 2^binade
  for (int b = 0; b < last; ++b) n += histogram[static_cast<std::size_t>(b)];
  return n - std::min(n, zeros);
}

double TensorStats::fp16_headroom_binades() const {
  if (max_abs == 0) return std::numeric_limits<double>::infinity();
  return std::log2(kFp16Max / max_abs);
}

void TensorStats::merge(const TensorStats& o) {
  const bool had_finite = elements > nonfinite(), other_finite = o.elements > o.nonfinite();
  elements += o.elements;
  nan += o.nan;
  pos_inf += o.pos_inf;
  neg_inf += o.neg_inf;
  zeros += o.zeros;
  subnormals += o.subnormals;
  beyond_fp16 += o.beyond_fp16;
  max_abs = std::max(max_abs, o.max_abs);
  if (other_finite) {
    min = had_finite ? std::min(min, o.min) : o.min;
    max = had_finite ? std::max(max, o.max) : o.max;
  }
  for (std::size_t b = 0; b < histogram.size(); ++b) histogram[b] += o.histogram[b];
}

namespace {

// FP32 bits of element i (exact for all three storage dtypes).
template <DType D>
std::uint32_t bits_of(const void* data, std::size_t i) {
  if constexpr (D == DType::f32) {
    return std::bit_cast<std::uint32_t>(static_cast<const float*>(data)[i]);
  } else if constexpr (D == DType::bf16) {
    return static_cast<std::uint32_t>(static_cast<const std::uint16_t*>(data)[i]) << 16;
  } else {
    return std::bit_cast<std::uint32_t>(static_cast<float>(static_cast<const numeric::Half*>(data)[i]));
  }
}

// Blocks of elements are widened to FP32 bits, then two passes over the L1-resident block: one that
// vectorises (counts by comparisons on the bits, finite range), one that counts sign+exponent (9 bits) into
// a 512-entry table; the binade histogram and the remaining counts come from that table.
constexpr std::size_t kBlock = 2048;

template <DType D>
MPX_VECTOR_CLONES void stats_range(const void* data, std::size_t begin, std::size_t end, TensorStats& s) {
  // min/max as order-preserving integer keys of the float bits: integer min/max reductions vectorise where
  // float ones (with their NaN rules) do not.
  std::uint32_t key_lo = 0xFFFFFFFFu, key_hi = 0;
  std::uint64_t nan = 0, nan_negative = 0, zeros = 0, beyond = 0;
  std::array<std::array<std::uint32_t, 512>, 4> table{};  // four tables: no store-to-load chains
  std::array<std::uint64_t, 512> exponents{};
  alignas(64) std::uint32_t bits[kBlock];
  s.elements = end - begin;
  for (std::size_t first = begin; first < end; first += kBlock) {
    const std::size_t n = std::min(kBlock, end - first);
    for (std::size_t i = 0; i < n; ++i) bits[i] = bits_of<D>(data, first + i);
    std::uint32_t block_nan = 0, block_nan_negative = 0, block_zeros = 0, block_beyond = 0;  // 32-bit lanes
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t u = bits[i], magnitude = u & 0x7FFFFFFFu;
      const std::uint32_t is_nan = magnitude > 0x7F800000u, finite = magnitude < 0x7F800000u;
      block_nan += is_nan;
      block_nan_negative += is_nan & (u >> 31);
      block_zeros += magnitude == 0;
      block_beyond += finite & (magnitude > 0x477FE000u);  // |x| > 65504
      // Unsigned order = float order: negatives flipped whole, positives get the top bit. Branch-free, and
      // non-finite elements become the identity of each reduction.
      const std::uint32_t key = u ^ (static_cast<std::uint32_t>(static_cast<std::int32_t>(u) >> 31) | 0x80000000u);
      key_lo = std::min(key_lo, key | (finite - 1u));
      key_hi = std::max(key_hi, key & (0u - finite));
    }
    nan += block_nan;
    nan_negative += block_nan_negative;
    zeros += block_zeros;
    beyond += block_beyond;
    for (std::size_t i = 0; i < n; ++i) ++table[i & 3][bits[i] >> 23];
    for (std::size_t e = 0; e < 512; ++e) {  // flushed per block: 32-bit counters never overflow
      exponents[e] += table[0][e] + table[1][e] + table[2][e] + table[3][e];
      table[0][e] = table[1][e] = table[2][e] = table[3][e] = 0;
    }
  }
  s.nan = nan;
  s.zeros = zeros;
  s.beyond_fp16 = beyond;
  s.pos_inf = exponents[255] - (nan - nan_negative);  // exponent 255: infinities and NaNs of each sign
  s.neg_inf = exponents[511] - nan_negative;
  for (int e = 0; e < 256; ++e) {
    const std::uint64_t count = exponents[static_cast<std::size_t>(e)] + exponents[static_cast<std::size_t>(e) + 256];
    if (e == 255) {
      s.histogram[TensorStats::kBuckets - 1] += s.pos_inf + s.neg_inf;  // infinities: overflow bucket
      continue;
    }
    // Binade floor(log2|x|) = e - 127 for normal floats; zeros and FP32 subnormals (e = 0) are far below
    // kMinBinade and land in the underflow bucket.
    s.histogram[static_cast<std::size_t>(TensorStats::bucket_of_binade(e == 0 ? -1000 : e - 127))] += count;
    if constexpr (D == DType::f16) {
      if (e > 0 && e < 127 - 14) s.subnormals += count;  // below FP16's smallest normal
    }
  }
  if constexpr (D != DType::f16) s.subnormals = exponents[0] + exponents[256] - zeros;
  if (key_lo != 0xFFFFFFFFu) {  // some element was finite
    auto float_of = [](std::uint32_t key) {
      return std::bit_cast<float>((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
    };
    const float lo = float_of(key_lo), hi = float_of(key_hi);
    s.min = lo;
    s.max = hi;
    s.max_abs = std::max(std::fabs(static_cast<double>(lo)), std::fabs(static_cast<double>(hi)));
  }
}

template <DType D>
TensorStats stats_of(const void* data, std::size_t count) {
  const int threads = count > (1u << 18) ? omp_get_max_threads() : 1;
  std::vector<TensorStats> parts(static_cast<std::size_t>(threads));
#pragma omp parallel num_threads(threads)
  {
    const auto t = static_cast<std::size_t>(omp_get_thread_num());
    const auto n = static_cast<std::size_t>(omp_get_num_threads());
    stats_range<D>(data, count * t / n, count * (t + 1) / n, parts[t]);
  }
  TensorStats total;
  for (const TensorStats& p : parts) total.merge(p);
  return total;
}

}  // namespace

TensorStats compute_stats(const void* data, DType dtype, std::size_t count) {
  if (count > 0 && data == nullptr) throw InvalidArgument("compute_stats: null data");
  switch (dtype) {
    case DType::f32: return stats_of<DType::f32>(data, count);
    case DType::bf16: return stats_of<DType::bf16>(data, count);
    case DType::f16: return stats_of<DType::f16>(data, count);
    default:
      throw InvalidArgument("numerics statistics cover f32, bf16 and f16 tensors, not " + std::string(name(dtype)));
  }
}

}  // namespace mpx::telemetry
