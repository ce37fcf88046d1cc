// Sequential models and the two builders for Fashion-MNIST: the CNN of the reference recipe
// (conv32-BN-ReLU-pool, conv64-BN-ReLU-pool, fc256-ReLU-dropout, fc10) and a small MLP.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mpx/nn/layers.h"

namespace mpx::nn {

class Sequential {
 public:
  void add(std::unique_ptr<Layer> layer) { layers_.push_back(std::move(layer)); }
  // Plans every layer for the largest batch; returns the output's shape and dtype.
  TensorSpec plan(const TensorSpec& input, Context& ctx);
  Tensor forward(const Tensor& x, Context& ctx, bool training);
  void backward(const Tensor& dy, Context& ctx);
  std::vector<Parameter*> parameters();
  const std::vector<std::unique_ptr<Layer>>& layers() const { return layers_; }

 private:
  std::vector<std::unique_ptr<Layer>> layers_;
};

// Images come in as NHWC [N, 28, 28, 1].
Sequential make_cnn(std::uint64_t seed);
Sequential make_mlp(std::uint64_t seed);
Sequential make_model(const std::string& name, std::uint64_t seed);  // "cnn" or "mlp"; throws InvalidArgument

}  // namespace mpx::nn
