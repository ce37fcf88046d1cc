// The model graph: layers in sequence (Sequential, itself a layer, so that stacks nest as named
// sub-modules such as h.0.attn), residual blocks (x + f(x)), and the builders for Fashion-MNIST: the CNN
// of the reference recipe (conv32-BN-ReLU-pool, conv64-BN-ReLU-pool, fc256-ReLU-dropout, fc10) and a small
// MLP. Layers carry their full PyTorch names ("conv1", "h.0.mlp.c_fc"); parameters are named after them.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mpx/nn/layers.h"

namespace mpx::nn {

class Sequential : public Layer {
 public:
  // A model's root (the default) takes data: its first layer computes no input gradient. A nested stack
  // (the body of a Residual) hands its input gradient on.
  explicit Sequential(std::string name = "");
  Sequential(Sequential&&) noexcept = default;
  Sequential& operator=(Sequential&&) noexcept = default;

  std::string kind() const override { return "sequential"; }
  void add(std::unique_ptr<Layer> layer) { layers_.push_back(std::move(layer)); }
  // Plans every layer for the largest batch; returns the output's shape and dtype.
  TensorSpec plan(const TensorSpec& input, Context& ctx) override;
  Tensor forward(const Tensor& x, Context& ctx, bool training) override;
  Tensor backward(const Tensor& dy, Context& ctx) override;
  std::vector<Parameter*> parameters() override;
  std::vector<std::pair<std::string, Tensor*>> buffers() override;
  void end_step(Context& ctx, bool applied) override;
  const std::vector<std::unique_ptr<Layer>>& layers() const { return layers_; }

 private:
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<Parameter*> shared_parameters_;  // root only: parameters used by more than one layer
};

// y = x + body(x), the body's output of x's shape and dtype (a transformer block's attention and MLP).
class Residual : public Layer {
 public:
  Residual(std::string name, std::unique_ptr<Sequential> body);
  std::string kind() const override { return "residual"; }
  TensorSpec plan(const TensorSpec& input, Context& ctx) override;
  Tensor forward(const Tensor& x, Context& ctx, bool training) override;
  Tensor backward(const Tensor& dy, Context& ctx) override;
  std::vector<Parameter*> parameters() override { return body_->parameters(); }
  std::vector<std::pair<std::string, Tensor*>> buffers() override { return body_->buffers(); }
  void end_step(Context& ctx, bool applied) override { body_->end_step(ctx, applied); }
  Sequential& body() { return *body_; }

 private:
  std::unique_ptr<Sequential> body_;
  Tensor output_, grad_input_;
};

// Calls fn on every layer of the model, depth first, nested stacks and residual bodies included.
void visit_layers(Sequential& model, const std::function<void(Layer&)>& fn);

// Images come in as NHWC [N, 28, 28, 1].
Sequential make_cnn(std::uint64_t seed);
Sequential make_mlp(std::uint64_t seed);
Sequential make_model(const std::string& name, std::uint64_t seed);  // "cnn" or "mlp"; throws InvalidArgument

}  // namespace mpx::nn
