// Causal multi-head self-attention on the GPU, the device twin of src/backend/cpu/attention.cpp: scores,
// softmax and both products in FP32 whatever the storage, streaming (no T x T matrix). A block takes 32 rows
// of one (sequence, head) and walks the other side's rows 32 at a time through shared memory; each warp owns
// four of the block's rows and each lane one column of a 32-wide tile of scores (and head_dim / 32 of the
// output's columns). Forward keeps an online softmax (running max, sum and output rescaled per tile) and
// writes each row's log-sum-exp; backward recomputes the probabilities from it: dq by query tiles (with
// rowsum(P dP) per row), dk and dv by key tiles, so that no two blocks write one element (no atomics, the
// same bits every run).
#include <cmath>

#include "launch.cuh"
#include "reduce.cuh"
#include "mpx/backend/cuda_transformer_kernels.h"

namespace mpx::cuda::kernels {

using detail::kFullWarp;
using detail::kind_of;
using detail::stream_of;
using detail::warp_max;
using detail::warp_sum;

namespace {

constexpr int kTile = 32;  // rows of a block, and rows of the other side per step (one per lane)
constexpr int kWarps = 8;
constexpr int kBlockThreads = kWarps * 32;
constexpr int kRowsPerWarp = kTile / kWarps;
constexpr int kSlices = static_cast<int>(kMaxAttentionHeadDim / 32);  // output columns per lane

// Shared-memory rows of a tile: an odd pitch, so that 32 lanes reading 32 rows at one column hit 32 banks.
__host__ __device__ constexpr int pitch_of(std::int64_t head_dim) {
  return static_cast<int>(head_dim % 2 == 0 ? head_dim + 1 : head_dim);
}

// Where one head's rows live: qkv rows are 3 * width apart (q, then k at +width, v at +2 width); y and dy
// rows are width apart.
struct Head {
  std::int64_t qkv_base, out_base;  // element of (sequence n, position 0, head h) in qkv and in y
  std::int64_t qkv_stride, out_stride, width;
};
__device__ Head head_of(const AttentionShape& s, std::int64_t n, std::int64_t h) {
  const std::int64_t width = s.heads * s.head_dim;
  return {n * s.tokens * 3 * width + h * s.head_dim, n * s.tokens * width + h * s.head_dim, 3 * width, width, width};
}

// Rows [first, first + valid) of a head's section (`base` + row * stride + d) into a tile of kTile rows,
// rows past `valid` zero.
__device__ void load_tile(const void* src, std::uint8_t kind, std::int64_t base, std::int64_t stride, std::int64_t first,
                          std::int64_t valid, int head_dim, float* tile) {
  const int pitch = pitch_of(head_dim);
  for (int e = threadIdx.x; e < kTile * head_dim; e += blockDim.x) {
    const int r = e / head_dim, d = e % head_dim;
    tile[r * pitch + d] = r < valid ? elements::load(src, base + (first + r) * stride + d, kind) : 0.0f;
  }
}

__device__ float dot(const float* a, const float* b, int n) {
  float sum = 0.0f;
  for (int d = 0; d < n; ++d) sum = fmaf(a[d], b[d], sum);
  return sum;
}

std::size_t tile_bytes(std::int64_t head_dim, int tiles, int extra_floats = 0) {
  return (static_cast<std::size_t>(tiles) * kTile * pitch_of(head_dim) + extra_floats) * sizeof(float);
}

// Kernels whose tiles need more than the default 48 KB of shared memory (head_dim 128) ask for it.
template <class Kernel>
void allow_shared(Kernel kernel, std::size_t bytes) {
  if (bytes > 48 * 1024) {
    MPX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

__global__ void __launch_bounds__(kBlockThreads)
    attention_forward_kernel(AttentionShape s, float scale, const void* qkv, std::uint8_t kind, float* row_lse, void* y) {
  extern __shared__ float shared[];
  const int head_dim = static_cast<int>(s.head_dim), pitch = pitch_of(head_dim);
  float* q_tile = shared;
  float* k_tile = q_tile + kTile * pitch;
  float* v_tile = k_tile + kTile * pitch;
  const std::int64_t q0 = static_cast<std::int64_t>(blockIdx.x) * kTile, h = blockIdx.y, n = blockIdx.z;
  const Head head = head_of(s, n, h);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t q_rows = std::min<std::int64_t>(kTile, s.tokens - q0);
  load_tile(qkv, kind, head.qkv_base, head.qkv_stride, q0, q_rows, head_dim, q_tile);

  float max[kRowsPerWarp], sum[kRowsPerWarp], out[kRowsPerWarp][kSlices];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    max[r] = -INFINITY;
    sum[r] = 0.0f;
#pragma unroll
    for (int u = 0; u < kSlices; ++u) out[r][u] = 0.0f;
  }
  const std::int64_t last_query = q0 + q_rows - 1;
  for (std::int64_t k0 = 0; k0 <= last_query; k0 += kTile) {
    __syncthreads();  // the previous tiles are consumed
    const std::int64_t k_rows = std::min<std::int64_t>(kTile, s.tokens - k0);
    load_tile(qkv, kind, head.qkv_base + head.width, head.qkv_stride, k0, k_rows, head_dim, k_tile);
    load_tile(qkv, kind, head.qkv_base + 2 * head.width, head.qkv_stride, k0, k_rows, head_dim, v_tile);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int local = warp + r * kWarps;
      const std::int64_t i = q0 + local;
      if (local >= q_rows || k0 > i) continue;  // the whole warp: this row sees none of the tile
      const int keys = static_cast<int>(std::min<std::int64_t>(kTile, i - k0 + 1));  // the causal reach
      const float score =
          lane < keys ? dot(q_tile + local * pitch, k_tile + lane * pitch, head_dim) * scale : -INFINITY;
      const float new_max = fmaxf(max[r], warp_max(score));
      const float p = expf(score - new_max);      // a masked lane: exp(-inf) = 0
      const float rescale = expf(max[r] - new_max);  // the first tile: exp(-inf) = 0
      sum[r] = sum[r] * rescale + warp_sum(p);
      max[r] = new_max;
#pragma unroll
      for (int u = 0; u < kSlices; ++u) out[r][u] *= rescale;
      for (int j = 0; j < keys; ++j) {
        const float pj = __shfl_sync(kFullWarp, p, j);
#pragma unroll
        for (int u = 0; u < kSlices; ++u) {
          const int d = lane + 32 * u;
          if (d < head_dim) out[r][u] = fmaf(pj, v_tile[j * pitch + d], out[r][u]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int local = warp + r * kWarps;
    if (local >= q_rows) continue;
    const std::int64_t i = q0 + local;
    const float inv = 1.0f / sum[r];
#pragma unroll
    for (int u = 0; u < kSlices; ++u) {
      const int d = lane + 32 * u;
      if (d < head_dim) elements::store(y, head.out_base + i * head.out_stride + d, kind, out[r][u] * inv);
    }
    if (lane == 0) row_lse[(n * s.heads + h) * s.tokens + i] = max[r] + logf(sum[r]);
  }
}

// dq = scale dS k with dS = P (dP - rowsum(P dP)), dP = dy v^T, by query tiles: a first walk over the keys
// sums P dP per row (kept in `row_weighted` for the key-tile kernel), a second forms dS and dq.
__global__ void __launch_bounds__(kBlockThreads)
    attention_dq_kernel(AttentionShape s, float scale, const void* qkv, const void* dy, std::uint8_t kind,
                        const float* row_lse, float* row_weighted, void* dqkv) {
  extern __shared__ float shared[];
  const int head_dim = static_cast<int>(s.head_dim), pitch = pitch_of(head_dim);
  float* q_tile = shared;
  float* g_tile = q_tile + kTile * pitch;
  float* k_tile = g_tile + kTile * pitch;
  float* v_tile = k_tile + kTile * pitch;
  const std::int64_t q0 = static_cast<std::int64_t>(blockIdx.x) * kTile, h = blockIdx.y, n = blockIdx.z;
  const Head head = head_of(s, n, h);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t q_rows = std::min<std::int64_t>(kTile, s.tokens - q0);
  load_tile(qkv, kind, head.qkv_base, head.qkv_stride, q0, q_rows, head_dim, q_tile);
  load_tile(dy, kind, head.out_base, head.out_stride, q0, q_rows, head_dim, g_tile);
  const std::int64_t stats = (n * s.heads + h) * s.tokens;

  float lse[kRowsPerWarp], weighted[kRowsPerWarp], dq[kRowsPerWarp][kSlices];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const std::int64_t i = q0 + warp + r * kWarps;
    lse[r] = i < s.tokens ? row_lse[stats + i] : 0.0f;
    weighted[r] = 0.0f;
#pragma unroll
    for (int u = 0; u < kSlices; ++u) dq[r][u] = 0.0f;
  }
  const std::int64_t last_query = q0 + q_rows - 1;
  for (int pass = 0; pass < 2; ++pass) {
    for (std::int64_t k0 = 0; k0 <= last_query; k0 += kTile) {
      __syncthreads();
      const std::int64_t k_rows = std::min<std::int64_t>(kTile, s.tokens - k0);
      load_tile(qkv, kind, head.qkv_base + head.width, head.qkv_stride, k0, k_rows, head_dim, k_tile);
      load_tile(qkv, kind, head.qkv_base + 2 * head.width, head.qkv_stride, k0, k_rows, head_dim, v_tile);
      __syncthreads();
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int local = warp + r * kWarps;
        const std::int64_t i = q0 + local;
        if (local >= q_rows || k0 > i) continue;
        const int keys = static_cast<int>(std::min<std::int64_t>(kTile, i - k0 + 1));
        float p = 0.0f, dp = 0.0f;
        if (lane < keys) {
          p = expf(dot(q_tile + local * pitch, k_tile + lane * pitch, head_dim) * scale - lse[r]);
          dp = dot(g_tile + local * pitch, v_tile + lane * pitch, head_dim);
        }
        if (pass == 0) {
          weighted[r] += warp_sum(p * dp);
          continue;
        }
        const float ds = p * (dp - weighted[r]) * scale;
        for (int j = 0; j < keys; ++j) {
          const float dsj = __shfl_sync(kFullWarp, ds, j);
#pragma unroll
          for (int u = 0; u < kSlices; ++u) {
            const int d = lane + 32 * u;
            if (d < head_dim) dq[r][u] = fmaf(dsj, k_tile[j * pitch + d], dq[r][u]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int local = warp + r * kWarps;
    if (local >= q_rows) continue;
    const std::int64_t i = q0 + local;
#pragma unroll
    for (int u = 0; u < kSlices; ++u) {
      const int d = lane + 32 * u;
      if (d < head_dim) elements::store(dqkv, head.qkv_base + i * head.qkv_stride + d, kind, dq[r][u]);
    }
    if (lane == 0) row_weighted[stats + i] = weighted[r];
  }
}

// dk = scale dS^T q and dv = P^T dy by key tiles: the block walks the query rows from its first key on.
__global__ void __launch_bounds__(kBlockThreads)
    attention_dkv_kernel(AttentionShape s, float scale, const void* qkv, const void* dy, std::uint8_t kind,
                         const float* row_lse, const float* row_weighted, void* dqkv) {
  extern __shared__ float shared[];
  const int head_dim = static_cast<int>(s.head_dim), pitch = pitch_of(head_dim);
  float* k_tile = shared;
  float* v_tile = k_tile + kTile * pitch;
  float* q_tile = v_tile + kTile * pitch;
  float* g_tile = q_tile + kTile * pitch;
  float* lse_tile = g_tile + kTile * pitch;
  float* weighted_tile = lse_tile + kTile;
  const std::int64_t k0 = static_cast<std::int64_t>(blockIdx.x) * kTile, h = blockIdx.y, n = blockIdx.z;
  const Head head = head_of(s, n, h);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t k_rows = std::min<std::int64_t>(kTile, s.tokens - k0);
  load_tile(qkv, kind, head.qkv_base + head.width, head.qkv_stride, k0, k_rows, head_dim, k_tile);
  load_tile(qkv, kind, head.qkv_base + 2 * head.width, head.qkv_stride, k0, k_rows, head_dim, v_tile);
  const std::int64_t stats = (n * s.heads + h) * s.tokens;

  float dk[kRowsPerWarp][kSlices], dv[kRowsPerWarp][kSlices];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int u = 0; u < kSlices; ++u) dk[r][u] = dv[r][u] = 0.0f;
  }
  for (std::int64_t q0 = k0; q0 < s.tokens; q0 += kTile) {
    __syncthreads();
    const std::int64_t q_rows = std::min<std::int64_t>(kTile, s.tokens - q0);
    load_tile(qkv, kind, head.qkv_base, head.qkv_stride, q0, q_rows, head_dim, q_tile);
    load_tile(dy, kind, head.out_base, head.out_stride, q0, q_rows, head_dim, g_tile);
    if (threadIdx.x < kTile) {
      lse_tile[threadIdx.x] = threadIdx.x < q_rows ? row_lse[stats + q0 + threadIdx.x] : 0.0f;
      weighted_tile[threadIdx.x] = threadIdx.x < q_rows ? row_weighted[stats + q0 + threadIdx.x] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int local = warp + r * kWarps;
      const std::int64_t j = k0 + local;
      if (local >= k_rows) continue;
      // Query rows of this tile that see key j: from max(j, q0) to the tile's end.
      const int first = static_cast<int>(std::max<std::int64_t>(0, j - q0));
      float p = 0.0f, ds = 0.0f;
      if (lane >= first && lane < q_rows) {
        p = expf(dot(q_tile + lane * pitch, k_tile + local * pitch, head_dim) * scale - lse_tile[lane]);
        const float dp = dot(g_tile + lane * pitch, v_tile + local * pitch, head_dim);
        ds = p * (dp - weighted_tile[lane]) * scale;
      }
      for (int i = first; i < q_rows; ++i) {
        const float pi = __shfl_sync(kFullWarp, p, i), dsi = __shfl_sync(kFullWarp, ds, i);
#pragma unroll
        for (int u = 0; u < kSlices; ++u) {
          const int d = lane + 32 * u;
          if (d < head_dim) {
            dv[r][u] = fmaf(pi, g_tile[i * pitch + d], dv[r][u]);
            dk[r][u] = fmaf(dsi, q_tile[i * pitch + d], dk[r][u]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int local = warp + r * kWarps;
    if (local >= k_rows) continue;
    const std::int64_t j = k0 + local;
#pragma unroll
    for (int u = 0; u < kSlices; ++u) {
      const int d = lane + 32 * u;
      if (d < head_dim) {
        elements::store(dqkv, head.qkv_base + head.width + j * head.qkv_stride + d, kind, dk[r][u]);
        elements::store(dqkv, head.qkv_base + 2 * head.width + j * head.qkv_stride + d, kind, dv[r][u]);
      }
    }
  }
}

__global__ void cache_write_kernel(const void* qkv, std::uint8_t kind, std::int64_t width, std::int64_t position,
                                   float* k_cache, float* v_cache) {
  MPX_GRID_STRIDE(c, width) {
    k_cache[position * width + c] = elements::load(qkv, width + c, kind);
    v_cache[position * width + c] = elements::load(qkv, 2 * width + c, kind);
  }
}

// One block per head: the new position's scores against every cached one (in dynamic shared memory), the
// softmax, and the weighted sum of the cached values, as the CPU's attention_step.
__global__ void __launch_bounds__(kBlockThreads)
    attention_step_kernel(AttentionShape s, float scale, const void* qkv, std::uint8_t kind, std::int64_t position,
                          const float* k_cache, const float* v_cache, void* y) {
  extern __shared__ float scores[];
  __shared__ float q[kMaxAttentionHeadDim];
  __shared__ float reduce[kWarps];
  const std::int64_t h = blockIdx.x, width = s.heads * s.head_dim, column = h * s.head_dim;
  for (std::int64_t d = threadIdx.x; d < s.head_dim; d += blockDim.x) q[d] = elements::load(qkv, column + d, kind);
  __syncthreads();
  float max = -INFINITY;
  for (std::int64_t j = threadIdx.x; j <= position; j += blockDim.x) {
    float sum = 0.0f;
    for (std::int64_t d = 0; d < s.head_dim; ++d) sum = fmaf(q[d], k_cache[j * width + column + d], sum);
    scores[j] = sum * scale;
    max = fmaxf(max, scores[j]);
  }
  max = detail::block_reduce(max, [](float a, float b) { return fmaxf(a, b); }, reduce);
  float total = 0.0f;
  for (std::int64_t j = threadIdx.x; j <= position; j += blockDim.x) {
    scores[j] = expf(scores[j] - max);
    total += scores[j];
  }
  total = detail::block_reduce(total, [](float a, float b) { return a + b; }, reduce);
  for (std::int64_t d = threadIdx.x; d < s.head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (std::int64_t j = 0; j <= position; ++j) acc = fmaf(scores[j] / total, v_cache[j * width + column + d], acc);
    elements::store(y, column + d, kind, acc);
  }
}

void require_shape(const AttentionShape& s, const char* what) {
  if (s.batch <= 0 || s.tokens <= 0 || s.heads <= 0 || s.head_dim <= 0 || s.head_dim > kMaxAttentionHeadDim) {
    throw InvalidArgument(std::string(what) + " on the GPU takes heads of 1 to " +
                          std::to_string(kMaxAttentionHeadDim) + " features, got " + std::to_string(s.heads) +
                          " heads of " + std::to_string(s.head_dim) + " over " + std::to_string(s.batch) + " x " +
                          std::to_string(s.tokens) + " positions");
  }
  if (s.batch > 65535 || s.heads > 65535) {
    throw InvalidArgument(std::string(what) + " on the GPU takes at most 65535 sequences and heads");
  }
}

float scale_of(const AttentionShape& s) { return 1.0f / std::sqrt(static_cast<float>(s.head_dim)); }

dim3 tiles_grid(const AttentionShape& s) {
  return dim3(static_cast<unsigned>((s.tokens + kTile - 1) / kTile), static_cast<unsigned>(s.heads),
              static_cast<unsigned>(s.batch));
}

}  // namespace

void attention_forward(DeviceContext& ctx, const AttentionShape& s, const void* qkv, DType dtype, float* row_logsumexp,
                       void* y) {
  require_shape(s, "attention");
  const std::size_t bytes = tile_bytes(s.head_dim, 3);
  allow_shared(attention_forward_kernel, bytes);
  attention_forward_kernel<<<tiles_grid(s), kBlockThreads, bytes, stream_of(ctx)>>>(s, scale_of(s), qkv, kind_of(dtype),
                                                                                    row_logsumexp, y);
  MPX_CUDA_CHECK_LAUNCH("attention_forward", s.batch * s.heads * s.tokens);
}

std::size_t attention_backward_workspace_floats(const AttentionShape& s) {
  return static_cast<std::size_t>(s.batch * s.heads * s.tokens);
}

void attention_backward(DeviceContext& ctx, const AttentionShape& s, const void* qkv, const float* row_logsumexp,
                        const void* dy, DType dtype, float* workspace, void* dqkv) {
  require_shape(s, "attention backward");
  const cudaStream_t stream = stream_of(ctx);
  const std::size_t dq_bytes = tile_bytes(s.head_dim, 4), dkv_bytes = tile_bytes(s.head_dim, 4, 2 * kTile);
  allow_shared(attention_dq_kernel, dq_bytes);
  allow_shared(attention_dkv_kernel, dkv_bytes);
  attention_dq_kernel<<<tiles_grid(s), kBlockThreads, dq_bytes, stream>>>(s, scale_of(s), qkv, dy, kind_of(dtype),
                                                                          row_logsumexp, workspace, dqkv);
  MPX_CUDA_CHECK_LAUNCH("attention_backward (dq)", s.batch * s.heads * s.tokens);
  attention_dkv_kernel<<<tiles_grid(s), kBlockThreads, dkv_bytes, stream>>>(s, scale_of(s), qkv, dy, kind_of(dtype),
                                                                            row_logsumexp, workspace, dqkv);
  MPX_CUDA_CHECK_LAUNCH("attention_backward (dk, dv)", s.batch * s.heads * s.tokens);
}

void attention_step(DeviceContext& ctx, const AttentionShape& s, const void* qkv, DType dtype, std::int64_t position,
                    float* k_cache, float* v_cache, void* y) {
  require_shape(s, "attention step");
  const cudaStream_t stream = stream_of(ctx);
  const std::int64_t width = s.width();
  cache_write_kernel<<<detail::blocks_for(width), detail::kThreads, 0, stream>>>(qkv, kind_of(dtype), width, position,
                                                                                k_cache, v_cache);
  MPX_CUDA_CHECK_LAUNCH("attention_step (cache)", width);
  const std::size_t bytes = static_cast<std::size_t>(position + 1) * sizeof(float);
  allow_shared(attention_step_kernel, bytes);
  attention_step_kernel<<<static_cast<unsigned>(s.heads), kBlockThreads, bytes, stream>>>(
      s, scale_of(s), qkv, kind_of(dtype), position, k_cache, v_cache, y);
  MPX_CUDA_CHECK_LAUNCH("attention_step", s.heads * (position + 1));
}

}  // namespace mpx::cuda::kernels
