#include "mpx/train/device_plan.h"

#include <string>

#include "mpx/core/error.h"
#include "mpx/nn/layers.h"

namespace mpx::train {

const char* name(DeviceOpKind k) {
  switch (k) {
    case DeviceOpKind::conv: return "conv2d";
    case DeviceOpKind::batch_norm: return "batch_norm2d";
    case DeviceOpKind::max_pool: return "max_pool2d";
    case DeviceOpKind::flatten: return "flatten";
    case DeviceOpKind::linear: return "linear";
    case DeviceOpKind::relu: return "relu";
    default: return "dropout";
  }
}

std::vector<DeviceOpPlan> plan_device_ops(nn::Sequential& model, DType compute, std::int64_t batch, std::int64_t height,
                                          std::int64_t width, std::int64_t channels, std::uint64_t seed) {
  std::int64_t h = height, w = width, c = channels;
  std::vector<DeviceOpPlan> ops;
  const auto& layers = model.layers();
  bool seen_parameters = false;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    nn::Layer* layer = layers[i].get();
    DeviceOpPlan op;
    op.layer = layer;
    op.in_features = h * w * c;
    op.out_dtype = compute;
    op.input_gradient = seen_parameters;
    if (auto* conv = dynamic_cast<nn::Conv2d*>(layer)) {
      op.kind = DeviceOpKind::conv;
      op.conv = conv->shape();
      op.conv.batch = batch;
      if (op.conv.in_channels != c || op.conv.height != h || op.conv.width != w) {
        throw InvalidArgument("layer " + layer->name() + " (conv2d) was planned for another input shape");
      }
      h = op.conv.out_height();
      w = op.conv.out_width();
      c = op.conv.out_channels;
    } else if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(layer)) {
      op.kind = DeviceOpKind::batch_norm;
      if (bn->channels() != c) throw InvalidArgument("layer " + layer->name() + " (batch_norm2d): channels do not match its input");
      op.norm = {h * w, c, bn->eps(), bn->momentum(), bn->fused_relu()};
    } else if (auto* pool = dynamic_cast<nn::MaxPool2d*>(layer)) {
      op.kind = DeviceOpKind::max_pool;
      op.pool = pool->kernel();
      op.conv = {batch, c, h, w, c, op.pool, op.pool, 0};
      h /= op.pool;
      w /= op.pool;
    } else if (dynamic_cast<nn::Flatten*>(layer)) {
      op.kind = DeviceOpKind::flatten;
      op.passes_through = true;
      c = h * w * c;
      h = w = 1;
    } else if (auto* linear = dynamic_cast<nn::Linear*>(layer)) {
      op.kind = DeviceOpKind::linear;
      if (linear->in_features() != op.in_features) {
        throw InvalidArgument("layer " + layer->name() + " (linear) takes " + std::to_string(linear->in_features()) +
                              " features, its input has " + std::to_string(op.in_features));
      }
      h = w = 1;
      c = linear->out_features();
      op.relu_after = i + 1 < layers.size() && dynamic_cast<nn::ReLU*>(layers[i + 1].get()) != nullptr;
      if (i + 1 == layers.size()) op.out_dtype = DType::f32;  // logits: the loss reads FP32
    } else if (dynamic_cast<nn::ReLU*>(layer)) {
      op.kind = DeviceOpKind::relu;
      op.passes_through = true;
      if (ops.empty() || ops.back().kind != DeviceOpKind::linear) {
        throw NotAvailable("the CUDA engine runs ReLU as the epilogue of the linear layer before it; " + layer->name() +
                           " follows " + (ops.empty() ? std::string("nothing") : std::string(name(ops.back().kind))) +
                           " (use --device cpu, or a BatchNorm with its fused ReLU)");
      }
    } else if (auto* drop = dynamic_cast<nn::Dropout*>(layer)) {
      op.kind = DeviceOpKind::dropout;
      op.dropout = {drop->probability(), drop->key(seed), static_cast<std::uint64_t>(batch * op.in_features)};
    } else {
      throw NotAvailable("the CUDA engine has no " + layer->kind() + " layer (" + layer->name() + "); use --device cpu");
    }
    op.out_features = h * w * c;
    seen_parameters = seen_parameters || !layer->parameters().empty();
    ops.push_back(op);
  }
  return ops;
}

}  // namespace mpx::train
