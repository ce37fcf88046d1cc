// Softmax + cross-entropy, always FP32 with double accumulation of the batch mean.
#include <cmath>
#include <string>

#include "mpx/core/error.h"
#include "mpx/nn/layers.h"

namespace mpx::nn {

void SoftmaxCrossEntropy::plan(const Shape& logits, Context& ctx) {
  if (logits.size() != 2) throw InvalidArgument("cross-entropy needs [N, classes] logits, got " + to_string(logits));
  probabilities_ = Tensor::empty(logits, DType::f32, MemoryCategory::activations, &ctx.memory);
  grad_ = Tensor::empty(logits, DType::f32, MemoryCategory::activations, &ctx.memory);
}

float SoftmaxCrossEntropy::forward(const Tensor& logits, const std::uint8_t* labels) {
  rows_ = logits.dim(0);
  const std::int64_t classes = logits.dim(1);
  labels_ = labels;
  const float* z = logits.data_as<float>();
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
  float* out = g.data_as<float>();
  const float factor = scale / static_cast<float>(rows_);
  for (std::int64_t r = 0; r < rows_; ++r) {
    for (std::int64_t c = 0; c < classes; ++c) {
      out[r * classes + c] = (p[r * classes + c] - (c == labels_[r] ? 1.0f : 0.0f)) * factor;
    }
  }
  return g;
}

}  // namespace mpx::nn
