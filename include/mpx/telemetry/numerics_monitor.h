// The numerics monitor: statistics of every named tensor the engine writes on sampled steps, the first op
// that went non-finite on a step that overflowed (found by replaying that step), FP16 headroom per layer
// and a plain recommendation. It watches the model as a LayerObserver and costs nothing on other steps.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "mpx/nn/layer.h"
#include "mpx/telemetry/tensor_stats.h"

namespace mpx::telemetry {

enum class TensorKind : std::uint8_t { activation, activation_grad, weight, master_weight, weight_grad, optimizer_state };
const char* kind_name(TensorKind kind);

struct TensorRecord {
  std::string tensor;  // e.g. "conv1.output", "conv1.output_grad", "conv1.weight.grad", "conv1.weight.exp_avg"
  std::string layer;   // e.g. "conv1"
  TensorKind kind = TensorKind::activation;
  DType dtype = DType::f32;
  TensorStats stats;
};

struct NumericsSample {
  std::int64_t step = 0;  // 1-based training step
  float loss_scale = 1;   // activation gradients are stored scaled by it
  std::vector<TensorRecord> tensors;
};

// Where a step first went non-finite, in execution order (forward, then backward).
struct NonFiniteOrigin {
  std::int64_t step = 0;
  std::string layer, pass;
  TensorStats input, output;  // what that layer read (backward: its incoming gradient) and wrote
  std::string describe() const;
};

struct LayerHeadroom {
  std::string layer;
  double activation_headroom = 0;  // binades between the largest |output| and 65504 (+inf: all zero)
  double gradient_headroom = 0;    // the same for the incoming gradient as stored (scaled)
  double underflow_unscaled = 0;   // fraction of incoming-gradient values below 2^-14 without loss scaling
  double underflow_scaled = 0;     // ... with the run's loss scale
  // keep | keep in FP32 | lower the loss scale | raise the initial scale | needs loss scaling in FP16
  std::string advice;
};

// Headroom of each layer with sampled activations, in model order.
std::vector<LayerHeadroom> layer_headroom(const NumericsSample& sample);
// One paragraph for people: what to do about FP16 (keep, raise the initial scale, use loss scaling, switch
// to bf16, keep these layers in FP32), from the headroom table and the run's skipped steps. `fp16_run`: the
// run itself stores FP16 (else the advice is for an FP16 rollout of it).
std::string recommendation(const std::vector<LayerHeadroom>& headroom, bool fp16_run, std::int64_t skipped_steps,
                           std::int64_t steps);

class NumericsMonitor : public nn::LayerObserver {
 public:
  enum class Mode : std::uint8_t { off, sample, locate };

  // Starts watching one pass over the model; `step` is 1-based.
  void begin(Mode mode, std::int64_t step, float loss_scale);
  void after_layer(const nn::Layer& layer, nn::Pass pass, const Tensor& input, const Tensor& output,
                   const nn::Context& ctx) override;
  // Sample mode, after the optimizer: weights (FP32 masters or weights, working copies), their gradients
  // and the optimizer state.
  // `backend`: where the parameters live (device tensors are read through host copies).
  void record_parameters(const std::vector<nn::Parameter*>& params, bool master_weights, backend::Backend& backend);
  Mode mode() const { return mode_; }

  NumericsSample take_sample();                    // the sample of the last sampled step
  std::optional<NonFiniteOrigin> take_origin();    // the origin found by the last locate pass, if any
  // Non-finite values seen in sampled or located tensors since the start, by (layer, kind, "nan"/"inf").
  const std::map<std::tuple<std::string, std::string, std::string>, std::uint64_t>& nonfinite_totals() const {
    return totals_;
  }

 private:
  void add(TensorRecord record);

  Mode mode_ = Mode::off;
  std::int64_t locate_step_ = 0, sampled_step_ = 0;
  NumericsSample sample_;
  std::optional<NonFiniteOrigin> origin_;
  std::map<std::tuple<std::string, std::string, std::string>, std::uint64_t> totals_;
};

// Writes non-finite values into one layer's output at one step, for drills and tests: `count` elements
// (spread over the tensor) become +inf (or NaN). Spec "LAYER:forward|backward:STEP[:COUNT[:nan]]".
class NonFiniteInjector : public nn::LayerObserver {
 public:
  static NonFiniteInjector parse(const std::string& spec);  // throws InvalidArgument naming the spec
  NonFiniteInjector(std::string layer, nn::Pass pass, std::int64_t step, std::int64_t count = 1, bool nan = false);
  void after_layer(const nn::Layer& layer, nn::Pass pass, const Tensor& input, const Tensor& output,
                   const nn::Context& ctx) override;
  const std::string& layer() const { return layer_; }
  nn::Pass pass() const { return pass_; }
  std::int64_t step() const { return step_; }
  std::int64_t count() const { return count_; }
  bool nan() const { return nan_; }
  // The elements of an n-element output that a drill poisons: index(k) for k < min(count, n), spread
  // evenly. The CUDA engine writes the same ones.
  static std::int64_t index(std::int64_t k, std::int64_t n, std::int64_t count) { return k * n / std::min(count, n); }
  // The bit pattern written into an element of `dtype` (f32, bf16 or f16).
  static std::uint32_t bits(DType dtype, bool nan);

 private:
  std::string layer_;
  nn::Pass pass_;
  std::int64_t step_, count_;
  bool nan_;
};

}  // namespace mpx::telemetry
