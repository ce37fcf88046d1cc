#include "mpx/nn/model.h"

#include <chrono>

#include "init.h"
#include "mpx/core/error.h"

namespace mpx::nn {

Sequential::Sequential(std::string name) : Layer(std::move(name)) { set_input_gradient_needed(false); }

TensorSpec Sequential::plan(const TensorSpec& input, Context& ctx) {
  if (!layers_.empty()) layers_.front()->set_input_gradient_needed(input_gradient_needed());
  TensorSpec spec = input;
  for (auto& layer : layers_) spec = layer->plan(spec, ctx);
  shared_parameters_.clear();  // tied weights, found once: backward zeroes their gradients every step
  if (!input_gradient_needed()) {
    for (Parameter* p : parameters()) {
      if (p->uses > 1) shared_parameters_.push_back(p);
    }
  }
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

// Profiling (mpx bench train --profile) times the root's layers, a nested stack inside its parent's entry.
Tensor Sequential::forward(const Tensor& x, Context& ctx, bool training) {
  Tensor h = x;
  const bool profile = ctx.profile_layers && !input_gradient_needed();
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const Tensor in = h;
    if (!profile) {
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

Tensor Sequential::backward(const Tensor& dy, Context& ctx) {
  Tensor g = dy;
  const bool root = !input_gradient_needed();
  for (Parameter* p : shared_parameters_) ctx.backend().fill_zero(p->grad);  // each use adds its part
  const bool profile = ctx.profile_layers && root;
  for (std::size_t i = layers_.size(); i-- > 0;) {
    if (i == 0 && !layers_[0]->input_gradient_needed() && layers_[0]->parameters().empty()) break;
    const Tensor in = g;
    if (!profile) {
      g = layers_[i]->backward(g, ctx);
    } else {
      const auto start = Clock::now();
      g = layers_[i]->backward(g, ctx);
      time_slot(ctx, i, layers_[i]->name()).backward_seconds +=
          std::chrono::duration<double>(Clock::now() - start).count();
    }
    for (LayerObserver* o : ctx.observers) o->after_layer(*layers_[i], Pass::backward, in, g, ctx);
  }
  return g;
}

std::vector<Parameter*> Sequential::parameters() {
  std::vector<Parameter*> out;
  for (auto& layer : layers_) {
    for (Parameter* p : layer->parameters()) out.push_back(p);
  }
  return out;
}

std::vector<std::pair<std::string, Tensor*>> Sequential::buffers() {
  std::vector<std::pair<std::string, Tensor*>> out;
  for (auto& layer : layers_) {
    for (auto& b : layer->buffers()) out.push_back(b);
  }
  return out;
}

void Sequential::end_step(Context& ctx, bool applied) {
  for (auto& layer : layers_) layer->end_step(ctx, applied);
}

Residual::Residual(std::string name, std::unique_ptr<Sequential> body) : Layer(std::move(name)), body_(std::move(body)) {
  if (!body_) throw InvalidArgument("residual block " + this->name() + " has no body");
  body_->set_input_gradient_needed(true);
}

TensorSpec Residual::plan(const TensorSpec& in, Context& ctx) {
  const TensorSpec out = body_->plan(in, ctx);
  if (out.shape != in.shape || out.dtype != in.dtype) {
    throw InvalidArgument("residual block " + name() + ": its body maps " + to_string(in.shape) + " " +
                          std::string(mpx::name(in.dtype)) + " to " + to_string(out.shape) + " " +
                          std::string(mpx::name(out.dtype)) + "; x + f(x) needs the same shape and dtype");
  }
  ctx.backend().require(backend::Op::add, in.dtype, name());
  output_ = ctx.allocate(in.shape, in.dtype, MemoryCategory::activations);
  grad_input_ = ctx.allocate(in.shape, in.dtype, MemoryCategory::activations);
  return in;
}

Tensor Residual::forward(const Tensor& x, Context& ctx, bool training) {
  const Tensor fx = body_->forward(x, ctx, training);
  Tensor y = output_.first_rows(x.dim(0));
  ctx.backend().add(x, fx, y);
  return y;
}

// d/dx (x + f(x)) = dy + f'(x)^T dy.
Tensor Residual::backward(const Tensor& dy, Context& ctx) {
  const Tensor through_body = body_->backward(dy, ctx);
  Tensor dx = grad_input_.first_rows(dy.dim(0));
  ctx.backend().add(dy, through_body, dx);
  return dx;
}

void visit_layers(Sequential& model, const std::function<void(Layer&)>& fn) {
  for (const auto& layer : model.layers()) {
    fn(*layer);
    if (auto* stack = dynamic_cast<Sequential*>(layer.get())) visit_layers(*stack, fn);
    if (auto* residual = dynamic_cast<Residual*>(layer.get())) visit_layers(residual->body(), fn);
  }
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
