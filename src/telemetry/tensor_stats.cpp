#include "mpx/telemetry/tensor_stats.h"

#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

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

template <DType D>
void stats_range(const void* data, std::size_t begin, std::size_t end, TensorStats& s) {
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  s.elements = end - begin;
  for (std::size_t i = begin; i < end; ++i) {
    const std::uint32_t u = bits_of<D>(data, i);
    const std::uint32_t magnitude = u & 0x7FFFFFFFu;
    const int exponent = static_cast<int>(magnitude >> 23);
    if (exponent == 0xFF) {
      if (magnitude > 0x7F800000u) {
        ++s.nan;
        continue;
      }
      ++(u >> 31 ? s.neg_inf : s.pos_inf);
      ++s.histogram[TensorStats::kBuckets - 1];
      continue;
    }
    const float v = std::bit_cast<float>(u);
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    s.zeros += magnitude == 0;
    if constexpr (D == DType::f16) {
      s.subnormals += magnitude != 0 && exponent < 127 - 14;  // below FP16's smallest normal
    } else {
      s.subnormals += magnitude != 0 && exponent == 0;
    }
    s.beyond_fp16 += std::fabs(v) > kFp16Max;
    // Binade floor(log2|x|) = exponent - 127 for normal floats; zeros and FP32 subnormals are far below
    // kMinBinade and land in the underflow bucket.
    ++s.histogram[static_cast<std::size_t>(TensorStats::bucket_of_binade(exponent == 0 ? -1000 : exponent - 127))];
  }
  if (lo <= hi) {
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
