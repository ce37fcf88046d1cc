// Softmax + cross-entropy, always FP32 with double accumulation of the batch mean.
#include <cmath>
#include <string>

#include "mpx/core/error.h"
#include "mpx/numeric/convert.h"
#include "mpx/nn/layers.h"
#include "storage.h"

namespace mpx::nn {

void SoftmaxCrossEntropy::plan(const TensorSpec& logits, Context& ctx) {
  if (logits.shape.size() != 2) {
    throw InvalidArgument("cross-entropy needs [N, classes] logits, got " + to_string(logits.shape));
  }
  probabilities_ = Tensor::empty(logits.shape, DType::f32, MemoryCategory::activations, &ctx.memory);
  grad_ = Tensor::empty(logits.shape, logits.dtype, MemoryCategory::activations, &ctx.memory);
  wide_logits_ = logits.dtype == DType::f32
                     ? Tensor()
                     : Tensor::empty(logits.shape, DType::f32, MemoryCategory::workspace, &ctx.memory);
}

float SoftmaxCrossEntropy::forward(const Tensor& logits, const std::uint8_t* labels) {
  detail::require_dtype(logits, grad_.dtype(), "cross_entropy", "logits tensor");
  rows_ = logits.dim(0);
  const std::int64_t classes = logits.dim(1);
  labels_ = labels;
  if (wide_logits_.defined()) {
    numeric::convert(logits.data(), logits.dtype(), wide_logits_.data(), DType::f32,
                     static_cast<std::size_t>(logits.numel()));
  }
  const float* z = wide_logits_.defined() ? wide_logits_.data_as<float>() : logits.data_as<float>();
  float* p = probabilities_.data_as<float>();
  double total = 0.0;
  for (std::int64_t r = 0; r < rows_; ++r) {
    if (labels[r] >= classes) {
      throw InvalidArgument("label " + std::to_string(labels[r]) + " at row " + std::to_string(r) +
                            " is out of range for " + std::to_string(classes) + " classes");
    }
    const float* row = z + r * classes;
    float max = row[0];
    for (std::int64_t c = 1; c < classes; ++c) max = std::fmax(max, row[c]);
    double sum = 0.0;
    for (std::int64_t c = 0; c < classes; ++c) sum += std::exp(static_cast<double>(row[c]) - max);
    const double log_sum = std::log(sum) + max;
    for (std::int64_t c = 0; c < classes; ++c) p[r * classes + c] = static_cast<float>(std::exp(row[c] - log_sum));
    total += log_sum - row[labels[r]];
  }
  return static_cast<float>(total / static_cast<double>(rows_));
}

Tensor SoftmaxCrossEntropy::backward(float scale) {
  const std::int64_t classes = probabilities_.dim(1);
  const float* p = probabilities_.data_as<float>();
  Tensor g = grad_.first_rows(rows_);
  const float factor = scale / static_cast<float>(rows_);
  detail::with_storage(g.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* out = detail::mutable_elements<T>(g);
    for (std::int64_t r = 0; r < rows_; ++r) {
      for (std::int64_t c = 0; c < classes; ++c) {
        detail::store(out + r * classes + c, (p[r * classes + c] - (c == labels_[r] ? 1.0f : 0.0f)) * factor);
      }
    }
  });
  return g;
}

}  // namespace mpx::nn
