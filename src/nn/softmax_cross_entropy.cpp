// Softmax + cross-entropy (the backend's cross_entropy op), always FP32 with double accumulation of the
// batch mean.
#include <string>

#include "init.h"
#include "mpx/core/error.h"
#include "mpx/nn/layers.h"

namespace mpx::nn {

void SoftmaxCrossEntropy::plan(const TensorSpec& logits, Context& ctx) {
  if (logits.shape.size() != 2) {
    throw InvalidArgument("cross-entropy needs [N, classes] logits, got " + to_string(logits.shape));
  }
  ctx.backend().require(backend::Op::cross_entropy, logits.dtype, "cross_entropy");
  backend_ = &ctx.backend();
  probabilities_ = ctx.allocate(logits.shape, DType::f32, MemoryCategory::activations);
  grad_ = ctx.allocate(logits.shape, logits.dtype, MemoryCategory::activations);
  labels_ = ctx.allocate({logits.shape[0]}, DType::u8, MemoryCategory::activations);
}

float SoftmaxCrossEntropy::forward(const Tensor& logits, const std::uint8_t* labels) {
  detail::require_dtype(logits, grad_.dtype(), "cross_entropy", "logits tensor");
  rows_ = logits.dim(0);
  const Tensor batch_labels = labels_.first_rows(rows_);
  backend_->upload(batch_labels, labels);
  return backend_->cross_entropy_forward(logits, batch_labels, probabilities_.first_rows(rows_));
}

Tensor SoftmaxCrossEntropy::backward(float scale) {
  Tensor g = grad_.first_rows(rows_);
  backend_->cross_entropy_backward(probabilities_.first_rows(rows_), labels_.first_rows(rows_), scale, g);
  return g;
}

}  // namespace mpx::nn
