// Layers own their forward and backward passes and compute only through the Context's Backend (CPU or
// CUDA), so one set of layers runs on every device. Activations and gradients are planned once for the
// largest batch (smaller batches use the leading rows of the same buffers), so memory is known up front
// and a step is a fixed sequence of backend ops. Activations are NHWC (or [N, features]) and stored as the
// backend stores the policy's activation dtype (Backend::activation_dtype); a gradient has the dtype of
// the activation it belongs to. Matmul and convolution read their inputs in the layer's compute dtype and
// accumulate in FP32; elementwise layers compute in FP32 whatever the storage. The Context is the one
// place that holds mutable engine state.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mpx/amp/precision_policy.h"
#include "mpx/backend/backend.h"
#include "mpx/tensor/tensor.h"

namespace mpx::nn {

// Time spent in each layer, when Context::profile_layers is on (mpx bench train --profile).
struct LayerTime {
  std::string name;
  double forward_seconds = 0, backward_seconds = 0;
  std::int64_t calls = 0;
};

class Layer;
struct Context;

enum class Pass : std::uint8_t { forward, backward };
const char* pass_name(Pass pass);

// Sees every layer's result as the model runs (numerics telemetry, fault injection for drills and
// tests). `input` is what the layer read (backward: the incoming gradient), `output` what it wrote
// (backward: the input gradient, undefined when the first layer skips it). An observer may write into
// `output`'s memory (that is how faults are injected); it must not keep the tensors.
class LayerObserver {
 public:
  virtual ~LayerObserver() = default;
  virtual void after_layer(const Layer& layer, Pass pass, const Tensor& input, const Tensor& output,
                           const Context& ctx) = 0;
};

struct Context {
  Context();  // on the CPU backend
  explicit Context(std::unique_ptr<backend::Backend> backend);
  backend::Backend& backend() const { return *backend_; }
  const MemoryTracker& memory() const { return backend_->memory(); }  // by category, with peaks
  Tensor allocate(const Shape& shape, DType dtype, MemoryCategory category) const {
    return backend_->allocate(shape, dtype, category);
  }
  Tensor zeros(const Shape& shape, DType dtype, MemoryCategory category) const {
    Tensor t = allocate(shape, dtype, category);
    backend_->fill_zero(t);
    return t;
  }
  // How activations are stored on this backend under the policy.
  DType activation_dtype() const { return backend_->activation_dtype(policy.activations); }

  bool profile_layers = false;
  std::vector<LayerTime> layer_times;  // in layer order, filled by Sequential when profiling
  amp::PrecisionPolicy policy = amp::PrecisionPolicy::preset("32-true");
  std::uint64_t seed = 0;
  std::uint64_t step = 0;  // training step: with the seed, it keys dropout's counter-based randomness
  // Data parallel: the ranks (global batch = replicas x the planned batch) and where this rank's rows
  // begin in the global batch, so that dropout draws what one process with the global batch would.
  std::uint64_t replicas = 1, first_row = 0;
  // What a training forward pass does with BatchNorm's running statistics: blend the batch's in at once
  // (update); blend them into a pending copy that end_step() commits only for an applied step (defer: the
  // trainer, so that a skipped step changes nothing); or leave them as they are (keep: the replay that
  // finds where a step went non-finite).
  enum class RunningStatistics : std::uint8_t { update, defer, keep };
  RunningStatistics running_statistics = RunningStatistics::update;
  std::vector<LayerObserver*> observers;  // called in order after each layer, when any
  // Generation with a KV cache: the position of the first token in the input (position embeddings and
  // cached attention read it); 0 in training.
  std::int64_t position_offset = 0;
  // Generation with a KV cache: row i of an [N, 1] input is position position_offset + i of one sequence
  // (a prompt fed in one pass), not N sequences of one token; false in training.
  bool rows_are_positions = false;

 private:
  std::unique_ptr<backend::Backend> backend_;
};

// A trainable tensor. `value` is FP32: the master weights in mixed precision, or (in *-true presets) the
// weights themselves, kept rounded to the compute dtype. `working` is what matmul/convolution read.
struct Parameter {
  std::string name;
  Tensor value;    // FP32
  Tensor working;  // the backend's operand copy (bf16; f16, or on the CPU f32 rounded to f16); undefined
                   // when it would equal value
  Tensor grad;     // FP32
  Tensor state1, state2;  // optimizer state, FP32, allocated by the optimizer
  bool decay = true;      // weight decay applies
  DType compute = DType::f32;
  // Layers that read it (2 for a tied weight): its gradient is then the sum over the uses, zeroed by the
  // model before each backward pass and added into by each layer.
  int uses = 1;

  const void* backend_data() const { return working.defined() ? working.data() : value.data(); }
  DType backend_dtype() const;
  // After an optimizer step: re-round the working copy (and, without master weights, the value itself).
  void refresh(backend::Backend& backend, bool master_weights);
};

// What flows between layers: a shape (batch first) and the dtype its elements are stored in.
struct TensorSpec {
  Shape shape;
  DType dtype = DType::f32;
};

class Layer {
 public:
  explicit Layer(std::string name) : name_(std::move(name)) {}
  virtual ~Layer() = default;
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  const std::string& name() const { return name_; }
  virtual std::string kind() const = 0;
  // Allocates what forward/backward need for inputs of `input` shape (batch first) and dtype, and returns
  // the output's. Throws InvalidArgument naming the layer when the shape or dtype does not fit.
  virtual TensorSpec plan(const TensorSpec& input, Context& ctx) = 0;
  // x has the planned shape (or fewer rows) and dtype; the returned tensor has x's batch size.
  virtual Tensor forward(const Tensor& x, Context& ctx, bool training) = 0;
  // dy: gradient of the loss with respect to the last forward's output, in the output's dtype. Returns dx
  // in the input's dtype; fills parameter grads (FP32).
  virtual Tensor backward(const Tensor& dy, Context& ctx) = 0;
  virtual std::vector<Parameter*> parameters() { return {}; }
  // State that is not trained but belongs to the model (BatchNorm's running statistics), by full name.
  virtual std::vector<std::pair<std::string, Tensor*>> buffers() { return {}; }
  // After the optimizer's decision on a step: state a deferred forward pass left pending (BatchNorm's
  // running statistics) is committed when the step was `applied`, dropped when it was skipped.
  virtual void end_step(Context& ctx, bool applied) {
    (void)ctx;
    (void)applied;
  }

  // The first layer of a model needs no gradient for its input (the images): Sequential turns it off, and
  // layers that can skip that work (convolution, linear) then return an undefined tensor from backward().
  void set_input_gradient_needed(bool needed) { input_gradient_needed_ = needed; }
  bool input_gradient_needed() const { return input_gradient_needed_; }

 protected:
  Layer(Layer&&) noexcept = default;  // containers (Sequential) are returned by value from builders
  Layer& operator=(Layer&&) noexcept = default;

 private:
  std::string name_;
  bool input_gradient_needed_ = true;
};

}  // namespace mpx::nn
