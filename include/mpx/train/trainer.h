// Mixed-precision training of the Fashion-MNIST models: the step (forward, FP32 loss, scaled backward,
// unscale + inf check, loss-scaler decision, clipping, optimizer on FP32 masters, working-copy refresh),
// epochs with seeded shuffling, and evaluation. Reports through callbacks; prints nothing itself.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "mpx/amp/loss_scaler.h"
#include "mpx/amp/optimizer.h"
#include "mpx/core/error.h"
#include "mpx/io/fashion_mnist.h"
#include "mpx/nn/model.h"
#include "mpx/telemetry/numerics_monitor.h"
#include "mpx/train/dataset.h"

namespace mpx::train {

class DeviceEngine;
class DivergenceRule;

// Settings that take one of a few values: parsed once where they come in (the CLI, a checkpoint), named
// when they go out (config.json, summary.json, logs).
enum class OptimizerKind : std::uint8_t { adamw, sgd };
enum class ScheduleKind : std::uint8_t { onecycle, cosine, constant };
enum class DeviceChoice : std::uint8_t { cpu, cuda, automatic };  // resolve() turns automatic into cpu or cuda
const char* name(OptimizerKind kind);
const char* name(ScheduleKind kind);
const char* name(DeviceChoice choice);
// Throw InvalidArgument naming the setting and the values it takes.
OptimizerKind parse_optimizer(const std::string& text);
ScheduleKind parse_schedule(const std::string& text);
DeviceChoice parse_device(const std::string& text);  // cpu, cuda or auto

struct TrainConfig {
  std::string model = "cnn";        // a builder of nn::make_model
  std::string precision;            // empty: bf16-mixed where the CPU has AVX512_BF16, else 16-mixed
  int epochs = 6;  // the main job: >= 92.5% in well under 3 minutes on 2 cores (bf16-mixed)
  int batch_size = 128;
  float lr = 3e-3f;                 // peak learning rate of the schedule
  OptimizerKind optimizer = OptimizerKind::adamw;
  float weight_decay = 1e-4f;
  float momentum = 0.9f;            // sgd
  ScheduleKind schedule = ScheduleKind::onecycle;
  float clip_norm = 0.0f;           // 0: no clipping
  std::optional<bool> loss_scaling;  // default: the policy's (FP16 presets)
  std::uint64_t seed = 0;
  std::int64_t train_subset = 0;    // use only the first N training images (0: all)
  std::int64_t test_subset = 0;
  std::int64_t max_steps = 0;       // stop after this many steps in total (0: no limit); the schedule still
                                    // spans `epochs`, so a stopped run resumes onto the same curve
  int log_every = 50;
  // Numerics telemetry: statistics of every tensor every N steps (0: off; 1% of step time at the default,
  // docs/PERFORMANCE.md); a step that goes non-finite is replayed to find the op where it started.
  int numerics_every = 100;
  bool detect_anomaly = false;  // stop at the first non-finite step (TrainingDiverged with the origin)
  std::string inject_nonfinite;  // drill: LAYER:forward|backward:STEP[:COUNT[:nan]] (see NonFiniteInjector)
  // Checkpoints (train/checkpoint.cpp): written to checkpoint_path every N steps and at the end (0: never).
  std::int64_t checkpoint_every = 0;
  std::string checkpoint_path;
  // cuda throws NotAvailable with the reason when there is no usable device; automatic is cuda when a device
  // is there. On CUDA full batches replay one captured graph unless cuda_graph is off.
  DeviceChoice device = DeviceChoice::cpu;
  bool cuda_graph = true;
  // FP32 products (32-true, and FP32 layers) through TF32 tensor cores on CUDA (PrecisionPolicy::allow_tf32).
  // InvalidArgument with device cpu; automatic resolving to the CPU turns it off.
  bool tf32 = false;
};

// Resolves defaults (precision) and checks ranges; throws InvalidArgument naming the setting.
TrainConfig resolve(TrainConfig config);

struct StepReport {
  int epoch = 0;
  std::int64_t step = 0, steps_per_epoch = 0, total_steps = 0;
  float loss = 0, lr = 0, loss_scale = 1;
  bool skipped = false;
  bool logged = false;  // run_training: this step went to metrics.jsonl
  double images_per_second = 0, elapsed_seconds = 0;
};

struct EpochReport {
  int epoch = 0;
  double train_loss = 0, test_accuracy = 0, seconds = 0, images_per_second = 0;
  std::int64_t skipped_steps = 0;
};

struct TrainResult {
  double test_accuracy = 0, train_seconds = 0, images_per_second = 0, final_loss = 0;
  std::int64_t steps = 0, skipped_steps = 0;
  amp::LossScalerState loss_scaler;
  bool loss_scaling = false;
  std::int64_t nonfinite_steps = 0;                         // steps whose loss or gradients were non-finite
  std::vector<telemetry::NonFiniteOrigin> nonfinite_origins;  // the first ten of them
  std::vector<telemetry::LayerHeadroom> headroom;            // from the last numerics sample
  std::string recommendation;
};

struct Callbacks {
  std::function<void(const StepReport&)> on_step;    // every step
  std::function<void(const EpochReport&)> on_epoch;  // after each epoch's evaluation
  std::function<void(const telemetry::NumericsSample&)> on_numerics;      // every numerics_every steps
  std::function<void(const telemetry::NonFiniteOrigin&)> on_nonfinite;  // each step that went non-finite
};

class Trainer {
 public:
  // Fashion-MNIST (the training set's first train_subset images; the test set's first test_subset).
  Trainer(const TrainConfig& config, const io::FashionMnist& data);
  // Any datasets of samples the model takes (CPU only; images_for_device: the CUDA engine's data). The
  // subsets are the datasets' business here.
  Trainer(const TrainConfig& config, std::unique_ptr<Dataset> train_set, std::unique_ptr<Dataset> test_set,
          const io::FashionMnist* images_for_device = nullptr);
  ~Trainer();
  TrainResult run(const Callbacks& callbacks = {});
  double evaluate();  // test accuracy, 0-1
  const TrainConfig& config() const { return config_; }
  // Everything a run needs to continue bit for bit: FP32 weights, optimizer state, BatchNorm statistics,
  // loss-scaler state, step, optimizer step, data position (epoch, step in epoch; the shuffle and dropout
  // are keyed by the seed and step), the counters so far and the configuration. One safetensors file,
  // written atomically with its SHA-256; load verifies it and that the configuration matches.
  void save_checkpoint(const std::string& path) const;
  void load_checkpoint(const std::string& path);  // before run(); throws IoError naming a mismatch
  // Before run(): starts from the weights and statistics of a model file (mpx's model.safetensors or a
  // PyTorch state dict saved with safetensors.torch.save_file); the optimizer and position start fresh.
  // Returns a notice when the file was in an older layout and converted on the way (else empty).
  std::string load_weights(const std::string& path);
  nn::Context& context() { return ctx_; }
  // "cpu", or the device the run uses ("cuda:0 (NVIDIA H100 80GB HBM3)").
  std::string device_name() const;
  std::size_t peak_bytes() const;  // the most memory the engine held (device memory on CUDA)
  const MemoryTracker& memory() const;  // the engine's memory by category (device memory on CUDA)
  nn::Sequential& model() { return model_; }

 private:
  void load_batch(const Dataset& set, const std::vector<std::int64_t>& order, std::int64_t first,
                  std::int64_t rows);
  bool step(const Tensor& batch, std::int64_t global_step, float lr, float& loss);
  // Replays the current step's forward (and backward) pass to find where it first went non-finite.
  std::optional<telemetry::NonFiniteOrigin> locate_nonfinite(const Tensor& batch, std::int64_t step, float scale,
                                                             bool backward);
  // The first weight gradient, in backward order, holding a non-finite value (when every layer output was
  // finite).
  std::optional<telemetry::NonFiniteOrigin> first_nonfinite_weight_gradient(std::int64_t step) const;

  // On a CUDA device: copies the state down into the host layers (checkpoints, model file, end of run).
  void sync_from_device();
  // A CUDA step's inf/NaN: counts it, finds its origin in the step's device tensors and stops as the CPU
  // path does.
  void note_device_nonfinite(bool found_inf, float loss, std::int64_t step_number, float scale);
  // A numerics sample of the CUDA step just taken (host copies of its tensors through the monitor).
  void sample_device_step(std::int64_t step_number, float scale);
  std::vector<float> lr_schedule(std::int64_t schedule_steps) const;

  TrainConfig config_;
  std::unique_ptr<Dataset> train_set_, test_set_;
  nn::Context ctx_;
  nn::Sequential model_;
  nn::SoftmaxCrossEntropy loss_;
  std::vector<nn::Parameter*> params_;
  // Views of every parameter's gradient and optimizer slot, built once: the step reuses them.
  std::vector<std::span<float>> grads_;
  std::vector<amp::ParameterSlot> slots_;
  std::vector<nn::Parameter*> needs_refresh_;  // parameters whose working copy the optimizer does not write
  std::optional<amp::LossScaler> scaler_;
  Tensor input_;
  std::vector<std::uint8_t> labels_;
  std::vector<std::int64_t> batch_indices_;
  std::int64_t optimizer_steps_ = 0;
  telemetry::NumericsMonitor monitor_;
  std::optional<telemetry::NonFiniteInjector> injector_;
  std::optional<telemetry::NumericsSample> pending_sample_;   // handed to the callbacks after the step
  std::optional<telemetry::NonFiniteOrigin> pending_origin_;
  std::unique_ptr<DivergenceRule> divergence_;  // one rule for every device
  // Where run() starts (after load_checkpoint) and where it is (for save_checkpoint).
  struct Position {
    int epoch = 1;                     // 1-based
    std::int64_t step_in_epoch = 0;    // steps of `epoch` already done
    std::int64_t global_step = 0;      // steps done
    std::int64_t skipped_steps = 0, nonfinite_steps = 0, images_seen = 0;
    double train_seconds = 0;
  } position_;
  std::unique_ptr<DeviceEngine> device_;  // when config_.device is cuda
  float device_loss_scale_ = 1.0f;        // the scale the next CUDA step multiplies the loss by
};

// Thrown when a run without loss scaling produces a non-finite loss: names the step and what to try.
class TrainingDiverged : public Error {
 public:
  using Error::Error;
};

// Whether `path` is a Trainer checkpoint (else, for --resume, a model file to start from). Throws IoError
// when it is no readable safetensors file.
bool is_checkpoint(const std::string& path);

}  // namespace mpx::train
