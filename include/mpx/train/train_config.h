// The settings of a training run: the model by name, the precision preset, optimizer, schedule and
// device as enums (parsed once where they come in: the CLI, a checkpoint), and resolve(), which fills the
// defaults and checks every setting before anything is allocated.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mpx/distributed/gradient_sync.h"
#include "mpx/nn/gpt.h"
#include "mpx/nn/model.h"

namespace mpx::train {

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
  std::string model = "cnn";        // cnn, mlp, or a GPT preset (gpt-tiny, gpt-char, gpt2)
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
  std::int64_t schedule_steps = 0;  // the learning-rate schedule's length in steps (0: the epochs')
  std::int64_t warmup_steps = 0;    // cosine: linear warm-up steps
  float min_lr = 0.0f;              // cosine: where it ends
  std::int64_t eval_every = 0;      // also evaluate every N steps (0: after each epoch only)
  // GPT models: the preset's sizes unless set (block_size 0, vocab_size 0: the data's vocabulary,
  // dropout < 0).
  std::int64_t block_size = 0;
  std::int64_t vocab_size = 0;
  float dropout = -1.0f;
  int log_every = 50;
  // metrics.jsonl also gets each step's sample indices ({"type": "samples"}), so that a reference
  // implementation can train on the same data in the same order.
  bool record_samples = false;
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
  int device_index = 0;  // which CUDA device (data parallel: the local rank's, one GPU per rank)
  bool cuda_graph = true;
  // FP32 products (32-true, and FP32 layers) through TF32 tensor cores on CUDA (PrecisionPolicy::allow_tf32).
  // InvalidArgument with device cpu; automatic resolving to the CPU turns it off.
  bool tf32 = false;
  // Data parallel (mpirun -np N, torchrun): how gradients travel between the ranks, the size of a
  // gradient bucket (MB of FP32 gradients) and how long a collective may wait for a rank before the run
  // names it and stops. batch_size is each rank's; the global batch is batch_size times the world size.
  distributed::GradComm grad_comm = distributed::GradComm::fp32;
  double bucket_mb = 25;
  double comm_timeout_seconds = 30;
};

// Resolves defaults (precision) and checks ranges; throws InvalidArgument naming the setting.
TrainConfig resolve(TrainConfig config);

// The GPT sizes a configuration asks for (the preset with its overrides), or nullopt for cnn and mlp.
std::optional<nn::GptConfig> gpt_config(const TrainConfig& config);
// The model a configuration names, unplanned (the one place models are built from settings).
nn::Sequential build_model(const TrainConfig& config);
// Every layer's name, nested ones included (what --inject-nonfinite may name).
std::vector<std::string> layer_names(nn::Sequential& model);

}  // namespace mpx::train
