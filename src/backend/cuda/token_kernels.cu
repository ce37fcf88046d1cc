// Token embeddings and the language model's loss on the GPU (see mpx/backend/cuda_transformer_kernels.h).
// Embedding backward is a scatter-add with many positions per id (a space or a position index recurs in every
// sequence): instead of float atomics, whose order changes run to run, the ids are sorted stably with cub
// and each distinct id's rows are added by one thread per column in position order, as the CPU adds them.
#include <cub/device/device_radix_sort.cuh>

#include "launch.cuh"
#include "reduce.cuh"
#include "mpx/backend/cuda_kernels.h"
#include "mpx/backend/cuda_transformer_kernels.h"

namespace mpx::cuda::kernels {

using detail::block_reduce;
using detail::blocks_for;
using detail::kind_of;
using detail::kThreads;
using detail::stream_of;

namespace {

__global__ void embedding_forward_kernel(const std::int32_t* ids, std::int64_t count, const float* table,
                                         std::int64_t vocabulary, std::int64_t dim, void* y, std::uint8_t kind,
                                         std::int32_t* bad_position) {
  MPX_GRID_STRIDE(i, count * dim) {
    const std::int64_t t = i / dim, c = i % dim;
    const std::int32_t id = ids[t];
    if (id < 0 || id >= vocabulary) {
      if (c == 0) atomicMin(bad_position, static_cast<std::int32_t>(t));
      elements::store(y, i, kind, 0.0f);
      continue;
    }
    elements::store(y, i, kind, table[static_cast<std::int64_t>(id) * dim + c]);
  }
}

__global__ void iota_kernel(std::uint32_t* out, std::int64_t count) {
  MPX_GRID_STRIDE(i, count) out[i] = static_cast<std::uint32_t>(i);
}

// Entry i of the sorted ids starts a run of one id: its block adds the run's rows of dy into the table.
__global__ void embedding_backward_kernel(const std::uint32_t* sorted_ids, const std::uint32_t* sorted_positions,
                                          std::int64_t count, const void* dy, std::uint8_t kind, std::int64_t dim,
                                          float* dtable) {
  for (std::int64_t i = blockIdx.x; i < count; i += gridDim.x) {
    const std::uint32_t id = sorted_ids[i];
    if (i > 0 && sorted_ids[i - 1] == id) continue;
    for (std::int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
      float sum = dtable[id * dim + c];
      for (std::int64_t j = i; j < count && sorted_ids[j] == id; ++j) {
        sum += elements::load(dy, static_cast<std::int64_t>(sorted_positions[j]) * dim + c, kind);
      }
      dtable[id * dim + c] = sum;
    }
  }
}

int bits_for(std::int64_t vocabulary) {
  int bits = 1;
  while (bits < 32 && (std::int64_t{1} << bits) < vocabulary) ++bits;
  return bits;
}

// The workspace of embedding_backward: sorted ids, positions in, sorted positions, then cub's own scratch.
struct SortSpace {
  std::size_t list_bytes = 0, cub_bytes = 0;
  std::size_t total() const { return 3 * list_bytes + cub_bytes; }
};
std::size_t aligned(std::size_t bytes) { return (bytes + 255) / 256 * 256; }
SortSpace sort_space(std::int64_t count, std::int64_t vocabulary) {
  SortSpace s;
  s.list_bytes = aligned(static_cast<std::size_t>(count) * sizeof(std::uint32_t));
  MPX_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, s.cub_bytes, static_cast<const std::uint32_t*>(nullptr),
                                                 static_cast<std::uint32_t*>(nullptr),
                                                 static_cast<const std::uint32_t*>(nullptr),
                                                 static_cast<std::uint32_t*>(nullptr), static_cast<int>(count), 0,
                                                 bits_for(vocabulary)));
  s.cub_bytes = aligned(s.cub_bytes);
  return s;
}

template <class Label>
__global__ void cross_entropy_rows_forward_kernel(const void* logits, std::uint8_t kind, const Label* labels,
                                                  std::int64_t rows, std::int64_t classes, float* p, double* row_loss) {
  __shared__ float shared_max[8];
  __shared__ double shared_sum[8];
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const std::int64_t base = r * classes;
    float max = -INFINITY;
    for (std::int64_t c = threadIdx.x; c < classes; c += blockDim.x) max = fmaxf(max, elements::load(logits, base + c, kind));
    max = block_reduce(max, [](float a, float b) { return fmaxf(a, b); }, shared_max);
    double sum = 0.0;
    for (std::int64_t c = threadIdx.x; c < classes; c += blockDim.x) {
      sum += exp(static_cast<double>(elements::load(logits, base + c, kind)) - max);
    }
    sum = block_reduce(sum, [](double a, double b) { return a + b; }, shared_sum);
    const double log_sum = log(sum) + max;
    for (std::int64_t c = threadIdx.x; c < classes; c += blockDim.x) {
      p[base + c] = static_cast<float>(exp(elements::load(logits, base + c, kind) - log_sum));
    }
    if (threadIdx.x == 0) {
      const auto label = static_cast<std::int64_t>(labels[r]);
      row_loss[r] = label >= 0 && label < classes ? log_sum - elements::load(logits, base + label, kind) : nan("");
    }
  }
}

template <class Label>
__global__ void cross_entropy_rows_backward_kernel(const float* p, const Label* labels, std::int64_t rows,
                                                   std::int64_t classes, float factor, void* grad, std::uint8_t kind) {
  MPX_GRID_STRIDE(i, rows * classes) {
    const std::int64_t r = i / classes, c = i % classes;
    elements::store(grad, i, kind, (p[i] - (c == static_cast<std::int64_t>(labels[r]) ? 1.0f : 0.0f)) * factor);
  }
}

// A warp per row for the CNN's ten classes, eight for a vocabulary.
int row_threads(std::int64_t classes) { return classes >= 1024 ? 256 : 32; }
int row_grid(std::int64_t rows) { return static_cast<int>(std::clamp<std::int64_t>(rows, 1, 65535)); }

void require_label_dtype(DType t) {
  if (t != DType::u8 && t != DType::i32) {
    throw InvalidArgument("cross-entropy reads u8 class labels or i32 token ids, not " + std::string(name(t)));
  }
}

}  // namespace

void embedding_forward(DeviceContext& ctx, const std::int32_t* ids, std::int64_t count, const float* table,
                       std::int64_t vocabulary, std::int64_t dim, void* y, DType dtype, std::int32_t* bad_position) {
  if (count * dim == 0) return;
  embedding_forward_kernel<<<blocks_for(count * dim), kThreads, 0, stream_of(ctx)>>>(ids, count, table, vocabulary, dim,
                                                                                     y, kind_of(dtype), bad_position);
  MPX_CUDA_CHECK_LAUNCH("embedding_forward", count * dim);
}

std::size_t embedding_backward_workspace_bytes(std::int64_t count, std::int64_t vocabulary) {
  return sort_space(count, vocabulary).total();
}

void embedding_backward(DeviceContext& ctx, const std::int32_t* ids, std::int64_t count, const void* dy, DType dtype,
                        std::int64_t vocabulary, std::int64_t dim, float* dtable, void* workspace,
                        std::size_t workspace_bytes) {
  if (count == 0) return;
  const SortSpace space = sort_space(count, vocabulary);
  if (workspace_bytes < space.total()) {
    throw InvalidArgument("embedding backward needs " + std::to_string(space.total()) + " bytes of workspace, got " +
                          std::to_string(workspace_bytes));
  }
  auto* base = static_cast<std::uint8_t*>(workspace);
  auto* sorted_ids = reinterpret_cast<std::uint32_t*>(base);
  auto* positions = reinterpret_cast<std::uint32_t*>(base + space.list_bytes);
  auto* sorted_positions = reinterpret_cast<std::uint32_t*>(base + 2 * space.list_bytes);
  void* cub_scratch = base + 3 * space.list_bytes;
  const cudaStream_t stream = stream_of(ctx);
  iota_kernel<<<blocks_for(count), kThreads, 0, stream>>>(positions, count);
  MPX_CUDA_CHECK_LAUNCH("embedding_backward (positions)", count);
  std::size_t cub_bytes = space.cub_bytes;
  // Ids were checked against the vocabulary in forward: as unsigned they need bits_for(vocabulary) bits.
  MPX_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(cub_scratch, cub_bytes, reinterpret_cast<const std::uint32_t*>(ids),
                                                 sorted_ids, positions, sorted_positions, static_cast<int>(count), 0,
                                                 bits_for(vocabulary), stream));
  const int threads = static_cast<int>(std::clamp<std::int64_t>((dim + 31) / 32 * 32, 32, 256));
  embedding_backward_kernel<<<row_grid(count), threads, 0, stream>>>(sorted_ids, sorted_positions, count, dy,
                                                                     kind_of(dtype), dim, dtable);
  MPX_CUDA_CHECK_LAUNCH("embedding_backward", count * dim);
}

void cross_entropy_forward(DeviceContext& ctx, const void* logits, DType dtype, const void* labels,
                                DType label_dtype, std::int64_t rows, std::int64_t classes, float* probabilities,
                                double* row_loss) {
  require_label_dtype(label_dtype);
  if (rows == 0) return;
  const cudaStream_t stream = stream_of(ctx);
  if (label_dtype == DType::i32) {
    cross_entropy_rows_forward_kernel<<<row_grid(rows), row_threads(classes), 0, stream>>>(
        logits, kind_of(dtype), static_cast<const std::int32_t*>(labels), rows, classes, probabilities, row_loss);
  } else {
    cross_entropy_rows_forward_kernel<<<row_grid(rows), row_threads(classes), 0, stream>>>(
        logits, kind_of(dtype), static_cast<const std::uint8_t*>(labels), rows, classes, probabilities, row_loss);
  }
  MPX_CUDA_CHECK_LAUNCH("cross_entropy_forward", rows * classes);
}

void cross_entropy_backward(DeviceContext& ctx, const float* probabilities, const void* labels, DType label_dtype,
                                 std::int64_t rows, std::int64_t classes, float factor, void* grad, DType dtype) {
  require_label_dtype(label_dtype);
  if (rows * classes == 0) return;
  const cudaStream_t stream = stream_of(ctx);
  if (label_dtype == DType::i32) {
    cross_entropy_rows_backward_kernel<<<blocks_for(rows * classes), kThreads, 0, stream>>>(
        probabilities, static_cast<const std::int32_t*>(labels), rows, classes, factor, grad, kind_of(dtype));
  } else {
    cross_entropy_rows_backward_kernel<<<blocks_for(rows * classes), kThreads, 0, stream>>>(
        probabilities, static_cast<const std::uint8_t*>(labels), rows, classes, factor, grad, kind_of(dtype));
  }
  MPX_CUDA_CHECK_LAUNCH("cross_entropy_backward", rows * classes);
}

}  // namespace mpx::cuda::kernels
