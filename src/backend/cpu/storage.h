// How the engine's own loops read and write activations stored as FP32 (`float`) or BF16 (`std::uint16_t`
// holding the top half of a binary32): arithmetic is FP32 either way, a store rounds to nearest-even.
// Written branch-free so that GCC vectorises the loops that use them. Internal to src/backend/cpu.
#pragma once

#include <bit>
#include <cstdint>
#include <string>

#include "../../common/bf16_bits.h"
#include "mpx/core/error.h"
#include "mpx/tensor/tensor.h"

namespace mpx::backend::cpu {

using mpx::detail::bf16_bits;
using mpx::detail::round_to_bf16;

inline float load(float v) { return v; }
inline float load(bf16_bits v) { return mpx::detail::widen_bf16(v); }
inline void store(float* p, float v) { *p = v; }
inline void store(bf16_bits* p, float v) { *p = round_to_bf16(v); }
// For values known to be representable (a copy of a loaded element, or zero): no rounding work. Selecting
// on FP32 values and storing them this way keeps every lane 32 bits wide, which GCC vectorises where a
// select between 16-bit elements under 32-bit comparisons stays scalar.
inline void store_exact(float* p, float v) { *p = v; }
inline void store_exact(bf16_bits* p, float v) {
  *p = static_cast<bf16_bits>(std::bit_cast<std::uint32_t>(v) >> 16);
}

// Calls fn(T{}) with T the element type of an activation dtype (f32 -> float, bf16 -> bf16_bits).
template <class Fn>
decltype(auto) with_storage(DType dtype, Fn&& fn) {
  if (dtype == DType::f32) return fn(float{});
  if (dtype == DType::bf16) return fn(bf16_bits{});
  throw InvalidArgument("activations are stored as f32 or bf16, not " + std::string(name(dtype)));
}

template <class T>
const T* elements(const Tensor& t) {
  return static_cast<const T*>(t.data());
}
template <class T>
T* mutable_elements(const Tensor& t) {
  return static_cast<T*>(t.data());
}

}  // namespace mpx::backend::cpu
