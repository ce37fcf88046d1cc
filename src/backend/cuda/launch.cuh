// Small helpers shared by the engine's kernel files: the context's stream, grid sizes, dtype kinds.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "check.h"
#include "elements.cuh"
#include "mpx/backend/cuda_context.h"
#include "mpx/core/error.h"
#include "mpx/numeric/dtype.h"

namespace mpx::cuda::detail {

inline cudaStream_t stream_of(DeviceContext& ctx) { return static_cast<cudaStream_t>(ctx.stream()); }

inline std::uint8_t kind_of(DType t) {
  switch (t) {
    case DType::f32: return elements::kF32;
    case DType::f16: return elements::kF16;
    case DType::bf16: return elements::kBF16;
    default: throw InvalidArgument("CUDA kernels take f32, f16 or bf16 tensors, got " + std::string(name(t)));
  }
}

constexpr int kThreads = 256;

// A grid-stride launch over `count` items: enough blocks to fill the GPU, never more than needed.
inline int blocks_for(std::int64_t count) {
  return static_cast<int>(std::clamp<std::int64_t>((count + kThreads - 1) / kThreads, 1, 65535));
}

#define MPX_GRID_STRIDE(i, count)                                                                  \
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < (count); \
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)

}  // namespace mpx::cuda::detail
