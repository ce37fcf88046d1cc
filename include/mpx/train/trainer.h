// Mixed-precision training of a model on a Dataset, on any backend: the step (forward, FP32 loss, scaled
// backward, unscale + inf check, loss-scaler decision, clipping, optimizer on FP32 masters, working-copy
// refresh), epochs with seeded shuffling, and evaluation. The same layers and step run on the CPU and on a
// CUDA device (the context's backend); files are read and written through host copies. Reports through
// callbacks; prints nothing itself.
#pragma once

#include <cstdint>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "mpx/amp/loss_scaler.h"
#include "mpx/amp/optimizer.h"
#include "mpx/backend/backend.h"
#include "mpx/core/error.h"
#include "mpx/io/fashion_mnist.h"
#include "mpx/io/safetensors.h"
#include "mpx/nn/model.h"
#include "mpx/telemetry/numerics_monitor.h"
#include "mpx/train/dataset.h"
#include "mpx/train/train_config.h"

namespace mpx::train {

class DivergenceRule;

struct StepReport {
  int epoch = 0;
  std::int64_t step = 0, steps_per_epoch = 0, total_steps = 0;
  float loss = 0, lr = 0, loss_scale = 1;
  bool skipped = false;
  bool logged = false;  // run_training: this step went to metrics.jsonl
  double images_per_second = 0, elapsed_seconds = 0;  // images: samples (token windows for a GPT)
  double tokens_per_second = 0;                       // language models: predicted positions per second
  std::span<const std::int64_t> samples;              // the step's sample indices (valid in the callback)
  const distributed::CommStats* comm = nullptr;       // data parallel: the step's gradient communication
};

// How the model does on the held-out set: accuracy (classes, or next tokens predicted exactly) and the
// mean cross-entropy over its rows (every position of a language model).
struct Evaluation {
  double accuracy = 0, loss = 0;
};

struct EvalReport {  // --eval-every
  std::int64_t step = 0;
  Evaluation evaluation;
};

struct EpochReport {
  int epoch = 0;
  double train_loss = 0, test_accuracy = 0, test_loss = 0, seconds = 0, images_per_second = 0;
  std::int64_t skipped_steps = 0;
};

struct TrainResult {
  double test_accuracy = 0, test_loss = 0, train_seconds = 0, images_per_second = 0, final_loss = 0;
  double tokens_per_second = 0;  // language models (0 for the image models)
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
  std::function<void(const EvalReport&)> on_eval;    // every eval_every steps
  std::function<void(const telemetry::NumericsSample&)> on_numerics;      // every numerics_every steps
  std::function<void(const telemetry::NonFiniteOrigin&)> on_nonfinite;  // each step that went non-finite
};

class Trainer {
 public:
  // Fashion-MNIST (the training set's first train_subset images; the test set's first test_subset).
  Trainer(const TrainConfig& config, const io::FashionMnist& data);
  // Any datasets of samples the model takes; the subsets are the datasets' business here.
  Trainer(const TrainConfig& config, std::unique_ptr<Dataset> train_set, std::unique_ptr<Dataset> test_set);
  ~Trainer();
  // Data parallel: this trainer is one rank of `group` (which must outlive it). Call before
  // load_checkpoint and run(): each step then trains on this rank's share of a global batch of
  // batch_size x group.size() samples (the rows one process with that batch would take, in order) and the
  // gradients are averaged across the ranks as config().grad_comm says; evaluation is shared out.
  void join(distributed::ProcessGroup& group);
  int rank() const { return group_ ? group_->rank() : 0; }
  int world_size() const { return group_ ? group_->size() : 1; }
  std::int64_t global_batch() const { return config_.batch_size * world_size(); }
  std::int64_t steps_per_epoch() const;
  // Error feedback's residuals are each rank's own: written beside the checkpoint (checkpoint-ef-rank-K).
  std::string residual_path(const std::string& checkpoint) const;
  TrainResult run(const Callbacks& callbacks = {});
  Evaluation evaluate();  // on the test (validation) set
  const TrainConfig& config() const { return config_; }
  // Everything a run needs to continue bit for bit: FP32 weights, optimizer state, BatchNorm statistics,
  // loss-scaler state, step, optimizer step, data position (epoch, step in epoch; the shuffle and dropout
  // are keyed by the seed and step), the counters so far and the configuration. One safetensors file,
  // written atomically with its SHA-256; load verifies it and that the configuration matches.
  void save_checkpoint(const std::string& path);
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
  // What the settings make pointless, said before training (e.g. a drill past the last step).
  const std::vector<std::string>& warnings() const { return warnings_; }
  // What resuming a checkpoint changed on the way ("" when nothing): another world size or --grad-comm.
  const std::string& resume_notice() const { return resume_notice_; }
  // Where the run stands (after load_checkpoint: where it resumes): steps done, and the epoch it is in.
  std::int64_t steps_done() const { return position_.global_step; }
  int epoch() const { return position_.epoch; }
  // The trained model in host memory (on a device run, a copy brought up to date by this call).
  nn::Sequential& model();

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
  float lr_at(std::int64_t step, std::int64_t schedule_steps) const;
  void warn_about_a_drill_without_effect();
  // A device run keeps a host copy of the model for files: these bring one side up to date with the other
  // (no-ops on the CPU, where both are the same model).
  void copy_state_to_host();
  void copy_state_to_device();

  TrainConfig config_;
  std::unique_ptr<Dataset> train_set_, test_set_;
  nn::Context ctx_;  // on the run's backend
  nn::Sequential model_;
  nn::SoftmaxCrossEntropy loss_;
  std::vector<nn::Parameter*> params_;
  std::unique_ptr<backend::OptimizerStep> optimizer_;
  bool loss_scaling_ = false;
  Tensor input_, input_host_;  // input_host_: where batches are gathered (input_ itself on the CPU)
  std::vector<std::byte> labels_;  // a batch's labels (u8 classes or i32 token ids)
  std::vector<std::int64_t> batch_indices_;
  // Device runs: the same model planned in host memory, for model files and checkpoints.
  std::unique_ptr<nn::Context> host_ctx_;
  std::unique_ptr<nn::Sequential> host_model_;
  telemetry::NumericsMonitor monitor_;
  std::optional<telemetry::NonFiniteInjector> injector_;
  std::optional<telemetry::NumericsSample> pending_sample_;   // handed to the callbacks after the step
  std::optional<telemetry::NonFiniteOrigin> pending_origin_;
  distributed::ProcessGroup* group_ = nullptr;
  double share_ = 1;  // this rank's rows over the global batch's, in the current step
  std::unique_ptr<distributed::GradientSync> sync_;
  std::string resume_notice_;  // what load_checkpoint changed on the way (another world size or --grad-comm)
  void save_residuals(const std::string& checkpoint);
  void load_residuals(const std::string& checkpoint, const std::string& written_with, int written_world);
  std::unique_ptr<DivergenceRule> divergence_;  // one rule for every device
  std::vector<std::string> warnings_;
  // Where run() starts (after load_checkpoint) and where it is (for save_checkpoint).
  struct Position {
    int epoch = 1;                     // 1-based
    std::int64_t step_in_epoch = 0;    // steps of `epoch` already done
    std::int64_t global_step = 0;      // steps done
    std::int64_t skipped_steps = 0, nonfinite_steps = 0, images_seen = 0;
    double train_seconds = 0;
    float last_loss = 0;  // of the last step done (what a run resumed at its end reports)
  } position_;
};

// Thrown when training cannot go on (a non-finite loss without loss scaling or master weights, too many
// non-finite steps in a row, --detect-anomaly): names the step and what to try, and carries where the
// values went non-finite (for the run's records).
class TrainingDiverged : public Error {
 public:
  TrainingDiverged(const std::string& message, telemetry::NonFiniteOrigin origin)
      : Error(message), origin_(std::move(origin)) {}
  const telemetry::NonFiniteOrigin& origin() const { return origin_; }  // origin().step: the step it stopped at

 private:
  telemetry::NonFiniteOrigin origin_;
};

// Steps in an epoch of `samples` with `world` ranks of `rank_batch` each: a last global batch too small to
// give every rank a sample is left out.
std::int64_t steps_per_epoch(std::int64_t samples, std::int64_t rank_batch, int world);

// Whether `path` is a Trainer checkpoint (else, for --resume, a model file to start from). Throws IoError
// when it is no readable safetensors file.
bool is_checkpoint(const std::string& path);
// "verified", "mismatch" or "not recorded" (not a checkpoint, or one written before the state had its own
// SHA-256): whether a checkpoint's training state is the one it was written with.
std::string checkpoint_state_status(const io::SafetensorsFile& file);

}  // namespace mpx::train
