// The training step of a Sequential model on a CUDA device: the same layers, policy, optimizer and
// loss-scaling rules as the CPU trainer, run as device kernels (src/backend/cuda) on device-resident data.
// Activations and their gradients are stored in the compute dtype (as autocast does); logits, loss,
// statistics, master weights, gradients and optimizer state are FP32. Full batches replay one captured
// CUDA graph (forward, loss, backward and the fused optimizer step) from the second full batch on; the first
// and the odd last batch run eagerly.
// Internal to src/train: the Trainer owns one when TrainConfig::device is "cuda".
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mpx/amp/loss_scaler.h"
#include "mpx/io/fashion_mnist.h"
#include "mpx/nn/model.h"
#include "mpx/telemetry/numerics_monitor.h"
#include "mpx/train/trainer.h"

namespace mpx::train {

struct DeviceStepOutcome {
  float loss = 0;
  bool applied = true, found_inf = false;
  float loss_scale = 1;  // after this step's scaler update
};

class DeviceEngine {
 public:
  // Plans every buffer for `config.batch_size` and uploads both image sets. Throws NotAvailable without a
  // device, and for a layer kind the device engine does not have. `injector`: a non-finite drill to run on
  // the device (its step runs eagerly, outside the captured graph).
  DeviceEngine(nn::Sequential& model, const amp::PrecisionPolicy& policy, const TrainConfig& config,
               const io::FashionMnist& data, io::PixelNormalisation normalise, bool loss_scaling,
               const telemetry::NonFiniteInjector* injector = nullptr);
  ~DeviceEngine();
  DeviceEngine(const DeviceEngine&) = delete;
  DeviceEngine& operator=(const DeviceEngine&) = delete;

  std::string device_name() const;
  std::size_t peak_bytes() const;  // device memory mpx held at most
  const MemoryTracker& memory() const;  // device memory by category, with peaks

  // Host -> device: weights, BatchNorm statistics, optimizer state, scaler state and counts (run start).
  void upload_state(const amp::LossScalerState* scaler, std::int64_t optimizer_steps, std::int64_t global_step);
  // Device -> host layers (checkpoints, the model file, numerics samples): the same into the model's
  // tensors, and the last step's gradients (still multiplied by the loss scale).
  void download_state(amp::LossScalerState* scaler, std::int64_t& optimizer_steps);
  // The learning rate of every step of the schedule, read on the device (steps beyond take the last).
  void set_lr_schedule(const std::vector<float>& lr_per_step);
  void set_order(const std::vector<std::int64_t>& order);  // this epoch's shuffled training indices

  // One training step on order[first, first + rows). Waits for it and reads loss and decision.
  DeviceStepOutcome step(std::int64_t first, std::int64_t rows);
  // The last step's tensors as host copies, in the order and roles the CPU engine's observers see them:
  // forward, each layer's input and output; then in backward order the gradient each layer received (as
  // input) and, with `gradients_handed_on`, the gradient it handed to the layer before (as output; else
  // undefined). For numerics samples and for locating a non-finite step (the activations are still there
  // until the next step). A fused ReLU's linear layer reports its output after the ReLU.
  using TensorVisitor =
      std::function<void(const nn::Layer& layer, nn::Pass pass, const Tensor& input, const Tensor& output)>;
  void visit_last_step(const TensorVisitor& visit, bool gradients_handed_on = false);
  // Correctly classified images among the first `total` of the test set.
  std::int64_t count_correct(std::int64_t total);

 private:
  DeviceStepOutcome run_step(std::int64_t first, std::int64_t rows);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpx::train
