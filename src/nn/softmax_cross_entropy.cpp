// Softmax + cross-entropy (the backend's cross_entropy op), always FP32 with double accumulation of the
// mean. Logits of any rank are read as [rows, classes]: a language model's positions are rows.
#include <string>

#include "init.h"
#include "mpx/core/error.h"
#include "mpx/nn/layers.h"

namespace mpx::nn {

void SoftmaxCrossEntropy::plan(const TensorSpec& logits, DType label_dtype, Context& ctx) {
  if (logits.shape.size() < 2) {
    throw InvalidArgument("cross-entropy needs [N, classes] or [N, T, classes] logits, got " + to_string(logits.shape));
  }
  if (label_dtype != DType::u8 && label_dtype != DType::i32) {
    throw InvalidArgument("cross-entropy reads u8 class labels or i32 token ids, not " + std::string(name(label_dtype)));
  }
  ctx.backend().require(backend::Op::cross_entropy, logits.dtype, "cross_entropy");
  backend_ = &ctx.backend();
  logits_shape_ = logits.shape;
  classes_ = logits.shape.back();
  const std::int64_t rows = numel(logits.shape) / classes_;
  rows_per_sample_ = rows / logits.shape[0];
  probabilities_ = ctx.allocate({rows, classes_}, DType::f32, MemoryCategory::activations);
  grad_ = ctx.allocate({rows, classes_}, logits.dtype, MemoryCategory::activations);
  labels_ = ctx.allocate({rows}, label_dtype, MemoryCategory::activations);
}

float SoftmaxCrossEntropy::forward(const Tensor& logits, const void* labels) {
  detail::require_dtype(logits, grad_.dtype(), "cross_entropy", "logits tensor");
  samples_ = logits.dim(0);
  rows_ = samples_ * rows_per_sample_;
  const Tensor batch_labels = labels_.first_rows(rows_);
  backend_->upload(batch_labels, labels);
  return backend_->cross_entropy_forward(logits.reshaped({rows_, classes_}), batch_labels,
                                         probabilities_.first_rows(rows_));
}

Tensor SoftmaxCrossEntropy::backward(float scale) {
  Tensor g = grad_.first_rows(rows_);
  backend_->cross_entropy_backward(probabilities_.first_rows(rows_), labels_.first_rows(rows_), scale, g);
  Shape shape = logits_shape_;
  shape[0] = samples_;
  return g.reshaped(shape);
}

}  // namespace mpx::nn
