// Loading and storing one element of an FP32, FP16 or BF16 tensor as float inside CUDA kernels, through
// the branch-free conversion lanes the CPU uses (bit-identical narrowing: nearest-even, NaN kept).
#pragma once

#include <cstdint>

#include "mpx/numeric/detail/formats.h"

namespace mpx::cuda::elements {

namespace lanes {
#include "../../numeric/kernels/lanes.inl"
}  // namespace lanes

// The element types a kernel sees; the numbers are passed in kernel arguments.
enum Kind : std::uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

__device__ __forceinline__ float load(const void* base, std::uint64_t i, std::uint8_t kind) {
  if (kind == kF32) return static_cast<const float*>(base)[i];
  const std::uint32_t h = static_cast<const std::uint16_t*>(base)[i];
  return lanes::float_from_bits(kind == kF16 ? lanes::widen_lane<lanes::HalfFormat>(h) : lanes::bfloat16_widen_lane(h));
}

__device__ __forceinline__ std::uint16_t narrow(float value, std::uint8_t kind) {
  const std::uint32_t u = lanes::float_bits_of(value);
  return static_cast<std::uint16_t>(kind == kF16 ? lanes::narrow_lane<lanes::HalfFormat>(u, false)
                                                 : lanes::bfloat16_narrow_lane(u));
}

__device__ __forceinline__ void store(void* base, std::uint64_t i, std::uint8_t kind, float value) {
  if (kind == kF32) static_cast<float*>(base)[i] = value;
  else static_cast<std::uint16_t*>(base)[i] = narrow(value, kind);
}

__device__ __forceinline__ bool is_finite(float value) {
  return (lanes::float_bits_of(value) & 0x7F800000u) != 0x7F800000u;
}

}  // namespace mpx::cuda::elements
