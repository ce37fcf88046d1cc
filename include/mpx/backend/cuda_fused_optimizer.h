// One fused mixed-precision optimizer step on the GPU over all parameters at once (multi-tensor): unscale
// the gradients, find inf/NaN, take the global norm and clip, take the loss scaler's skip/backoff/growth
// decision, apply AdamW or SGD to FP32 master weights and FP32 state, and write the FP16/BF16 working
// copies in the same pass. Three launches, no host synchronisation: the scaler state, the step count and
// the decision live on the device, so the step can be captured in a CUDA graph. The arithmetic is the
// CPU optimizer's (mpx/amp/detail/update_rules.h, apply_scaler_rule).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "mpx/amp/loss_scaler.h"
#include "mpx/amp/optimizer.h"
#include "mpx/backend/cuda_context.h"
#include "mpx/numeric/dtype.h"

namespace mpx::cuda {

// Device pointers of one parameter tensor, all `count` elements long.
struct DeviceParameter {
  float* master = nullptr;                // FP32 values: master weights, updated in place
  const void* grad = nullptr;             // gradient as the backward pass left it (times the loss scale)
  DType grad_dtype = DType::f32;          // f32, f16 or bf16
  float* state1 = nullptr;                // SGD momentum / AdamW first moment (FP32)
  float* state2 = nullptr;                // AdamW second moment (FP32); unused by SGD
  void* working = nullptr;                // low-precision copy the forward pass reads; nullptr: none
  DType working_dtype = DType::bf16;      // f16 or bf16
  std::size_t count = 0;
  bool decay = true;                      // weight decay applies
  // *-true presets: no master weights, so the FP32 value itself is kept rounded to working_dtype.
  bool round_master = false;
};

struct FusedStepConfig {
  enum class Algorithm { adamw, sgd };
  Algorithm algorithm = Algorithm::adamw;
  amp::AdamWConfig adamw;
  amp::SgdConfig sgd;
  double clip_norm = 0;        // global-norm clipping of the unscaled gradients; 0: none
  bool loss_scaling = false;   // false: scale 1, non-finite steps are still skipped
  amp::LossScalerConfig scaler;
  // Parameters with round_master and a BF16 working copy round stochastically (bf16-true), with the
  // stream of amp::detail::weight_rounding_stream: the CPU backend's bits.
  bool stochastic_rounding = false;
  std::uint64_t rounding_seed = 0;
};

// What the device decided in the last step, with the scaler's state (read back for logs and checkpoints).
struct FusedStepRecord {
  amp::LossScalerState scaler;
  std::int64_t optimizer_steps = 0;  // applied steps: AdamW's bias-correction count
  std::int64_t calls = 0;            // steps taken, applied or skipped: the index into an lr table
  double grad_norm = 0;              // of the unscaled gradients, before clipping
  float loss = 0;                    // the device_loss the step was given (0 without one)
  bool found_inf = false, applied = false;
};

class FusedOptimizer {
 public:
  // Throws InvalidArgument on a parameter with null pointers or unsupported dtypes.
  FusedOptimizer(DeviceContext& context, const FusedStepConfig& config, std::vector<DeviceParameter> parameters);
  ~FusedOptimizer();
  FusedOptimizer(const FusedOptimizer&) = delete;
  FusedOptimizer& operator=(const FusedOptimizer&) = delete;

  // Enqueues one step with this learning rate. `device_loss` (optional, one float on the device): a
  // non-finite loss skips the step too.
  void step(float lr, const float* device_loss = nullptr);
  // The same with the learning rate read on the device from `lr_table[calls]` (uploaded once with
  // set_lr_table): what a captured CUDA graph replays, since its kernel arguments are frozen.
  void set_lr_table(const std::vector<float>& lr_per_step);
  void step_from_table(const float* device_loss = nullptr);

  // The scale the next backward pass multiplies the loss by (one float on the device).
  const float* device_loss_scale() const;
  // Waits for the stream and reads the device's record.
  FusedStepRecord record() const;
  // Resumes from a checkpoint: the scaler state and step counts.
  void load(const FusedStepRecord& record);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpx::cuda
