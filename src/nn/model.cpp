#include "mpx/nn/model.h"

#include <chrono>

#include "mpx/core/error.h"

namespace mpx::nn {

TensorSpec Sequential::plan(const TensorSpec& input, Context& ctx) {
  if (!layers_.empty()) layers_.front()->set_input_gradient_needed(false);
  TensorSpec spec = input;
  for (auto& layer : layers_) spec = layer->plan(spec, ctx);
  return spec;
}

namespace {
using Clock = std::chrono::steady_clock;
LayerTime& time_slot(Context& ctx, std::size_t index, const std::string& name) {
  if (ctx.layer_times.size() <= index) ctx.layer_times.resize(index + 1);
  ctx.layer_times[index].name = name;
  return ctx.layer_times[index];
}
}  // namespace

Tensor Sequential::forward(const Tensor& x, Context& ctx, bool training) {
  Tensor h = x;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const Tensor in = h;
    if (!ctx.profile_layers) {
      h = layers_[i]->forward(h, ctx, training);
    } else {
      const auto start = Clock::now();
      h = layers_[i]->forward(h, ctx, training);
      LayerTime& t = time_slot(ctx, i, layers_[i]->name());
      t.forward_seconds += std::chrono::duration<double>(Clock::now() - start).count();
      ++t.calls;
    }
    for (LayerObserver* o : ctx.observers) o->after_layer(*layers_[i], Pass::forward, in, h, ctx);
  }
  return h;
}

void Sequential::backward(const Tensor& dy, Context& ctx) {
  Tensor g = dy;
  for (std::size_t i = layers_.size(); i-- > 0;) {
    if (i == 0 && !layers_[0]->input_gradient_needed() && layers_[0]->parameters().empty()) break;
    const Tensor in = g;
    if (!ctx.profile_layers) {
      g = layers_[i]->backward(g, ctx);
    } else {
      const auto start = Clock::now();
      g = layers_[i]->backward(g, ctx);
      time_slot(ctx, i, layers_[i]->name()).backward_seconds +=
          std::chrono::duration<double>(Clock::now() - start).count();
    }
    for (LayerObserver* o : ctx.observers) o->after_layer(*layers_[i], Pass::backward, in, g, ctx);
  }
}

std::vector<Parameter*> Sequential::parameters() {
  std::vector<Parameter*> out;
  for (auto& layer : layers_) {
    for (Parameter* p : layer->parameters()) out.push_back(p);
  }
  return out;
}

Sequential make_cnn(std::uint64_t seed) {
  Sequential m;
  m.add(std::make_unique<Conv2d>("conv1", 1, 32, 3, 1, 1, seed + 100));
  // BatchNorm and ReLU fused into one layer: one memory pass less each way (same function).
  m.add(std::make_unique<BatchNorm2d>("bn1", 32, 0.1f, 1e-5f, /*fused_relu=*/true));
  m.add(std::make_unique<MaxPool2d>("pool1", 2));
  m.add(std::make_unique<Conv2d>("conv2", 32, 64, 3, 1, 1, seed + 200));
  m.add(std::make_unique<BatchNorm2d>("bn2", 64, 0.1f, 1e-5f, /*fused_relu=*/true));
  m.add(std::make_unique<MaxPool2d>("pool2", 2));
  m.add(std::make_unique<Flatten>("flatten"));
  m.add(std::make_unique<Linear>("fc1", 64 * 7 * 7, 256, seed + 300));
  m.add(std::make_unique<ReLU>("relu3"));
  m.add(std::make_unique<Dropout>("dropout", 0.25f, 1));
  m.add(std::make_unique<Linear>("fc2", 256, 10, seed + 400));
  return m;
}

Sequential make_mlp(std::uint64_t seed) {
  Sequential m;
  m.add(std::make_unique<Flatten>("flatten"));
  m.add(std::make_unique<Linear>("fc1", 28 * 28, 512, seed + 100));
  m.add(std::make_unique<ReLU>("relu1"));
  m.add(std::make_unique<Dropout>("dropout", 0.2f, 1));
  m.add(std::make_unique<Linear>("fc2", 512, 256, seed + 200));
  m.add(std::make_unique<ReLU>("relu2"));
  m.add(std::make_unique<Linear>("fc3", 256, 10, seed + 300));
  return m;
}

Sequential make_model(const std::string& name, std::uint64_t seed) {
  if (name == "cnn") return make_cnn(seed);
  if (name == "mlp") return make_mlp(seed);
  throw InvalidArgument("unknown model '" + name + "'; expected cnn or mlp");
}

}  // namespace mpx::nn
