// The CPU backend's memory, dtype rules, conversions, reductions, embedding and loss. (Products and
// convolutions: onednn_backend.cpp; pointwise ops and pooling: pointwise.cpp; normalisations: norms.cpp.)
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "mpx/backend/cpu_backend.h"
#include "mpx/core/error.h"
#include "mpx/numeric/convert.h"
#include "mpx/numeric/half.h"
#include "../../common/vector_clones.h"
#include "storage.h"

namespace mpx::backend {

using namespace cpu;  // storage.h: load/store of FP32 and BF16 elements

bool CpuBackend::supports(Op op, DType dtype) const {
  switch (op) {
    case Op::matmul:
    case Op::conv2d:
      // FP16 runs as FP32 holding FP16-rounded values (operand_dtype): oneDNN 2.6 has no CPU FP16.
      return dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::f16;
    case Op::embedding: return dtype == DType::i32 || dtype == DType::f32 || dtype == DType::bf16;
    case Op::convert: return true;
    default: return dtype == DType::f32 || dtype == DType::bf16;  // the loops' storage types
  }
}

Tensor CpuBackend::allocate(const Shape& shape, DType dtype, MemoryCategory category) {
  return Tensor::empty(shape, dtype, category, &memory_);
}

void CpuBackend::upload(const Tensor& t, const void* host) {
  if (t.bytes() != 0 && t.data() != host) std::memcpy(t.data(), host, t.bytes());
}

void CpuBackend::download(const Tensor& t, void* host) {
  if (t.bytes() != 0 && t.data() != host) std::memcpy(host, t.data(), t.bytes());
}

// FP16 activations are FP32 buffers here (no CPU FP16 in oneDNN 2.6); BF16 is stored as BF16.
DType CpuBackend::activation_dtype(DType policy_activations) const {
  return policy_activations == DType::bf16 ? DType::bf16 : DType::f32;
}

DType CpuBackend::operand_dtype(DType compute) const { return compute == DType::bf16 ? DType::bf16 : DType::f32; }

// oneDNN writes BF16 only from BF16 inputs: every other product writes FP32.
DType CpuBackend::product_output_dtype(DType compute, DType stored) const {
  return stored == DType::bf16 && operand_dtype(compute) == DType::bf16 ? DType::bf16 : DType::f32;
}

void CpuBackend::round_for_compute(const Tensor& src_tensor, const Tensor& dst_tensor, DType compute) {
  const float* src = src_tensor.data_as<float>();
  void* dst = dst_tensor.data();
  const auto count = static_cast<std::size_t>(src_tensor.numel());
  switch (compute) {
    case DType::bf16: numeric::convert(src, DType::f32, dst, DType::bf16, count); return;
    case DType::f16: {
      // Round to FP16, then widen back to FP32 exactly, through an L1-sized block so that nothing is
      // allocated per call.
      constexpr std::size_t kBlock = 4096;
      auto* out = static_cast<float*>(dst);
#pragma omp parallel if (count > 65536)
      {
        alignas(64) numeric::Half half[kBlock];
#pragma omp for schedule(static)
        for (std::int64_t first = 0; first < static_cast<std::int64_t>(count); first += kBlock) {
          const std::size_t n = std::min<std::size_t>(kBlock, count - static_cast<std::size_t>(first));
          numeric::convert(src + first, DType::f32, half, DType::f16, n, {numeric::CpuPath::automatic, 1});
          numeric::convert(half, DType::f16, out + first, DType::f32, n, {numeric::CpuPath::automatic, 1});
        }
      }
      return;
    }
    default:
      if (dst != src) std::memcpy(dst, src, count * sizeof(float));
  }
}

void CpuBackend::convert(const Tensor& src, const Tensor& dst) {
  if (src.dtype() == dst.dtype()) {
    if (src.data() != dst.data()) std::memcpy(dst.data(), src.data(), src.bytes());
    return;
  }
  numeric::convert(src.data(), src.dtype(), dst.data(), dst.dtype(), static_cast<std::size_t>(src.numel()));
}

namespace {
// Columns split between threads when the work is large, each summed over the rows in order: the same
// sums whatever the thread count.
template <class T>
MPX_VECTOR_CLONES void column_sums_range(const T* __restrict d, std::int64_t rows, std::int64_t cols, std::int64_t first,
                                         std::int64_t last, float* __restrict out) {
  for (std::int64_t j = first; j < last; ++j) out[j] = 0.0f;
  for (std::int64_t i = 0; i < rows; ++i) {
    const T* row = d + i * cols;
#pragma omp simd
    for (std::int64_t j = first; j < last; ++j) out[j] += load(row[j]);
  }
}

template <class T>
void column_sums_of(const T* d, std::int64_t rows, std::int64_t cols, float* out) {
#pragma omp parallel if (rows * cols > 65536 && cols >= 64)
  {
    const auto t = static_cast<std::int64_t>(omp_get_thread_num()), n = static_cast<std::int64_t>(omp_get_num_threads());
    column_sums_range(d, rows, cols, cols * t / n, cols * (t + 1) / n, out);
  }
}
}  // namespace

void CpuBackend::column_sums(const Tensor& x, const Tensor& out) {
  const std::int64_t cols = out.numel();
  with_storage(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    column_sums_of(elements<T>(x), x.numel() / cols, cols, out.data_as<float>());
  });
}

void CpuBackend::embedding_forward(const Tensor& ids, const Tensor& table_tensor, const Tensor& y) {
  const std::int64_t vocabulary = table_tensor.dim(0), dim = table_tensor.dim(1);
  const std::int32_t* id = ids.data_as<std::int32_t>();
  for (std::int64_t t = 0; t < ids.numel(); ++t) {
    if (id[t] < 0 || id[t] >= vocabulary) {
      throw InvalidArgument("token id " + std::to_string(id[t]) + " at position " + std::to_string(t) +
                            " is outside the vocabulary of " + std::to_string(vocabulary));
    }
  }
  const float* table = table_tensor.data_as<float>();
  with_storage(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* out = mutable_elements<T>(y);
    for (std::int64_t t = 0; t < ids.numel(); ++t) {
      for (std::int64_t c = 0; c < dim; ++c) store(out + t * dim + c, table[id[t] * dim + c]);
    }
  });
}

void CpuBackend::embedding_backward(const Tensor& ids, const Tensor& dy, const Tensor& dtable, bool accumulate) {
  if (!accumulate) dtable.fill_zero();
  const std::int64_t dim = dtable.dim(1);
  const std::int32_t* id = ids.data_as<std::int32_t>();
  float* grad = dtable.data_as<float>();
  with_storage(dy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* g = elements<T>(dy);
    for (std::int64_t t = 0; t < ids.numel(); ++t) {
      for (std::int64_t c = 0; c < dim; ++c) grad[id[t] * dim + c] += load(g[t * dim + c]);
    }
  });
}

namespace {
// Class labels (u8) or token ids (i32), one per row, each checked against the number of classes.
std::vector<std::int64_t> row_labels(const Tensor& labels, std::int64_t rows, std::int64_t classes) {
  std::vector<std::int64_t> out(static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t label = labels.dtype() == DType::i32 ? labels.data_as<std::int32_t>()[r]
                                                            : labels.data_as<std::uint8_t>()[r];
    if (label < 0 || label >= classes) {
      throw InvalidArgument("label " + std::to_string(label) + " at row " + std::to_string(r) +
                            " is out of range for " + std::to_string(classes) + " classes");
    }
    out[static_cast<std::size_t>(r)] = label;
  }
  return out;
}
}  // namespace

// Logits of f32 storage are read in place; bf16 ones are widened into the probabilities buffer first
// (autocast widens the loss's input the same way), then overwritten row by row.
float CpuBackend::cross_entropy_forward(const Tensor& logits, const Tensor& labels_tensor,
                                        const Tensor& probabilities) {
  const std::int64_t rows = logits.dim(0), classes = logits.dim(1);
  const std::vector<std::int64_t> labels = row_labels(labels_tensor, rows, classes);
  float* p = probabilities.data_as<float>();
  if (logits.dtype() != DType::f32) {
    numeric::convert(logits.data(), logits.dtype(), p, DType::f32, static_cast<std::size_t>(logits.numel()));
  }
  const float* z = logits.dtype() == DType::f32 ? logits.data_as<float>() : p;
  double total = 0.0;
#pragma omp parallel for reduction(+ : total) if (rows * classes > 65536)
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = z + r * classes;
    float max = row[0];
    for (std::int64_t c = 1; c < classes; ++c) max = std::fmax(max, row[c]);
    double sum = 0.0;
    for (std::int64_t c = 0; c < classes; ++c) sum += std::exp(static_cast<double>(row[c]) - max);
    const double log_sum = std::log(sum) + max;
    const double label_logit = row[labels[static_cast<std::size_t>(r)]];  // read before the row is overwritten
    for (std::int64_t c = 0; c < classes; ++c) p[r * classes + c] = static_cast<float>(std::exp(row[c] - log_sum));
    total += log_sum - label_logit;
  }
  return static_cast<float>(total / static_cast<double>(rows));
}

void CpuBackend::cross_entropy_backward(const Tensor& probabilities, const Tensor& labels_tensor, float scale,
                                        const Tensor& grad) {
  const std::int64_t rows = grad.dim(0), classes = grad.dim(1);
  const float* p = probabilities.data_as<float>();
  const std::vector<std::int64_t> labels = row_labels(labels_tensor, rows, classes);
  const float factor = scale / static_cast<float>(rows);
  with_storage(grad.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* out = mutable_elements<T>(grad);
#pragma omp parallel for if (rows * classes > 65536)
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t label = labels[static_cast<std::size_t>(r)];
      for (std::int64_t c = 0; c < classes; ++c) {
        store(out + r * classes + c, (p[r * classes + c] - (c == label ? 1.0f : 0.0f)) * factor);
      }
    }
  });
}

}  // namespace mpx::backend
