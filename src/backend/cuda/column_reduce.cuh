// Column reductions for the engine's kernels (BatchNorm, LayerNorm parameters, bias gradients): a
// [column tiles x row blocks] grid of 32 x 8 threads (512 rows a block, more for huge batches so that the
// grid's y extent stays within 65,535) accumulates up to two sums per column in double and
// writes one partial per row block and column; column_totals adds a column's partials in row-block order,
// so results do not depend on scheduling. Op: __device__ void(row, column, columns, double& a, double& b).
#pragma once

#include "launch.cuh"

namespace mpx::cuda::detail {

constexpr int kTileColumns = 32, kRowLanes = 8;
constexpr std::int64_t kRowsPerBlock = 512, kMaxRowBlocks = 65535;  // gridDim.y's limit

// 512 rows a block, more when that would need more than 65,535 row blocks (batches of tens of thousands).
__host__ __device__ inline std::int64_t rows_per_block(std::int64_t rows) {
  const std::int64_t spread = (rows + kMaxRowBlocks - 1) / kMaxRowBlocks;
  return spread > kRowsPerBlock ? spread : kRowsPerBlock;
}
inline std::int64_t row_blocks(std::int64_t rows) {
  return std::max<std::int64_t>(1, (rows + rows_per_block(rows) - 1) / rows_per_block(rows));
}

template <class Op>
__global__ void column_partials_kernel(Op op, std::int64_t rows, std::int64_t columns, double* partials) {
  __shared__ double shared_a[kRowLanes][kTileColumns], shared_b[kRowLanes][kTileColumns];
  const std::int64_t c = blockIdx.x * static_cast<std::int64_t>(kTileColumns) + threadIdx.x;
  const std::int64_t per_block = rows_per_block(rows);
  const std::int64_t first = blockIdx.y * per_block, last = min(rows, first + per_block);
  double a = 0, b = 0;
  if (c < columns) {
    for (std::int64_t r = first + threadIdx.y; r < last; r += kRowLanes) op(r, c, columns, a, b);
  }
  shared_a[threadIdx.y][threadIdx.x] = a;
  shared_b[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && c < columns) {
    for (int lane = 1; lane < kRowLanes; ++lane) {
      a += shared_a[lane][threadIdx.x];
      b += shared_b[lane][threadIdx.x];
    }
    const std::int64_t at = (blockIdx.y * columns + c) * 2;
    partials[at] = a;
    partials[at + 1] = b;
  }
}

template <class Op>
inline void column_partials(DeviceContext& ctx, Op op, std::int64_t rows, std::int64_t columns, float* workspace,
                     const char* name) {
  const dim3 grid(static_cast<unsigned>((columns + kTileColumns - 1) / kTileColumns), static_cast<unsigned>(row_blocks(rows)));
  column_partials_kernel<<<grid, dim3(kTileColumns, kRowLanes), 0, stream_of(ctx)>>>(op, rows, columns,
                                                                                      reinterpret_cast<double*>(workspace));
  MPX_CUDA_CHECK_LAUNCH(name, rows * columns);
}

// Sums the partials of column c in row-block order.
__device__ inline void column_totals(const double* partials, std::int64_t blocks, std::int64_t columns, std::int64_t c,
                              double& a, double& b) {
  a = 0;
  b = 0;
  for (std::int64_t k = 0; k < blocks; ++k) {
    a += partials[(k * columns + c) * 2];
    b += partials[(k * columns + c) * 2 + 1];
  }
}

}  // namespace mpx::cuda::detail
