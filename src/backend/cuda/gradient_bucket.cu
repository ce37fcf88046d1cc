// The data-parallel gradient bucket on the device (backend.h, GradientBucket): the twin of
// src/backend/cpu/gradient_bucket.cpp, element for element. The products and sums are written with the
// round-to-nearest intrinsics so that nvcc cannot fuse them into one FMA (which would round once where the
// CPU rounds twice, and give other bits).
#include "launch.cuh"
#include "mpx/backend/cuda_kernels.h"

namespace mpx::cuda::kernels {

using detail::blocks_for;
using detail::kind_of;
using detail::kThreads;
using detail::stream_of;

namespace {

__global__ void prepare_bucket_kernel(float* values, float* reference, const float* residual, void* wire,
                                      std::uint8_t wire_kind, float* next_residual, std::uint8_t* nonfinite,
                                      std::int64_t count, float weight) {
  MPX_GRID_STRIDE(i, count) {
    const float g = values[i];
    if (!elements::is_finite(g)) *nonfinite = 1;  // every writer writes the same value
    float v = __fmul_rn(g, weight);
    if (reference != nullptr) reference[i] = v;
    if (residual != nullptr) v = __fadd_rn(v, residual[i]);
    values[i] = v;
    if (wire == nullptr) continue;
    const std::uint16_t bits = elements::narrow(v, wire_kind);
    static_cast<std::uint16_t*>(wire)[i] = bits;
    if (next_residual == nullptr) continue;
    const float lost = __fsub_rn(v, elements::load(wire, i, wire_kind));
    next_residual[i] = elements::is_finite(lost) ? lost : 0.0f;
  }
}

}  // namespace

void prepare_gradient_bucket(DeviceContext& ctx, const GradientBucketPointers& b, std::int64_t count, float weight) {
  if (count == 0) return;
  const std::uint8_t kind = b.wire != nullptr ? kind_of(b.wire_dtype) : elements::kF32;
  prepare_bucket_kernel<<<blocks_for(count), kThreads, 0, stream_of(ctx)>>>(
      b.values, b.reference, b.residual, b.wire, kind, b.next_residual, b.nonfinite, count, weight);
  MPX_CUDA_CHECK_LAUNCH("prepare_gradient_bucket", count);
}

}  // namespace mpx::cuda::kernels
