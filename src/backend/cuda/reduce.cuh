// Warp and block reductions in a fixed order: the same inputs give the same bits run to run, and every
// thread of the warp (block) returns the same value.
#pragma once

namespace mpx::cuda::detail {

constexpr unsigned kFullWarp = 0xFFFFFFFFu;

// Butterfly over the 32 lanes: each step adds a lane's value and its partner's, which is commutative, so
// all lanes hold identical totals.
template <class T, class Combine>
__device__ __forceinline__ T warp_reduce(T value, Combine combine) {
  for (int offset = 16; offset > 0; offset /= 2) value = combine(value, __shfl_xor_sync(kFullWarp, value, offset));
  return value;
}
__device__ __forceinline__ float warp_sum(float v) {
  return warp_reduce(v, [](float a, float b) { return a + b; });
}
__device__ __forceinline__ float warp_max(float v) {
  return warp_reduce(v, [](float a, float b) { return fmaxf(a, b); });
}

// The warps' values combined in warp order. blockDim.x is a multiple of 32 and at most 32 * 8; `shared`
// holds 8 values. Every thread of the block must call it.
template <class T, class Combine>
__device__ T block_reduce(T value, Combine combine, T* shared) {
  value = warp_reduce(value, combine);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  T total = shared[0];
  for (int w = 1; w < warps; ++w) total = combine(total, shared[w]);
  __syncthreads();
  return total;
}

}  // namespace mpx::cuda::detail
