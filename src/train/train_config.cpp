#include "mpx/train/train_config.h"

#include <cmath>

#include "mpx/amp/precision_policy.h"
#include "mpx/backend/cuda.h"
#include "mpx/core/cpu_features.h"
#include "mpx/core/error.h"
#include "mpx/nn/model.h"
#include "mpx/telemetry/numerics_monitor.h"

namespace mpx::train {

const char* name(OptimizerKind kind) { return kind == OptimizerKind::adamw ? "adamw" : "sgd"; }
const char* name(ScheduleKind kind) {
  return kind == ScheduleKind::onecycle ? "onecycle" : kind == ScheduleKind::cosine ? "cosine" : "constant";
}
const char* name(DeviceChoice choice) {
  return choice == DeviceChoice::cpu ? "cpu" : choice == DeviceChoice::cuda ? "cuda" : "auto";
}

OptimizerKind parse_optimizer(const std::string& text) {
  if (text == "adamw") return OptimizerKind::adamw;
  if (text == "sgd") return OptimizerKind::sgd;
  throw InvalidArgument("--optimizer must be adamw or sgd, got '" + text + "'");
}

ScheduleKind parse_schedule(const std::string& text) {
  if (text == "onecycle") return ScheduleKind::onecycle;
  if (text == "cosine") return ScheduleKind::cosine;
  if (text == "constant") return ScheduleKind::constant;
  throw InvalidArgument("--schedule must be onecycle, cosine or constant, got '" + text + "'");
}

DeviceChoice parse_device(const std::string& text) {
  if (text == "cpu") return DeviceChoice::cpu;
  if (text == "cuda") return DeviceChoice::cuda;
  if (text == "auto") return DeviceChoice::automatic;
  throw InvalidArgument("--device must be cpu, cuda or auto, got '" + text + "'");
}

TrainConfig resolve(TrainConfig c) {
  if (c.precision.empty()) c.precision = cpu_features().avx512_bf16 ? "bf16-mixed" : "16-mixed";
  c.precision = amp::PrecisionPolicy::preset(c.precision).name;  // validates, canonical name
  if (c.model != "cnn" && c.model != "mlp" && !nn::is_gpt_model(c.model)) {
    throw InvalidArgument("--model must be cnn, mlp, gpt-tiny, gpt-char or gpt2, got " + c.model);
  }
  if (c.schedule_steps < 0) throw InvalidArgument("--schedule-steps must be >= 0 (0: the epochs')");
  if (c.warmup_steps < 0) throw InvalidArgument("--warmup-steps must be >= 0");
  if (!(c.min_lr >= 0 && c.min_lr <= c.lr)) throw InvalidArgument("--min-lr must be in [0, --lr]");
  if (c.eval_every < 0) throw InvalidArgument("--eval-every must be >= 0 (0: after each epoch)");
  if (c.block_size < 0 || c.vocab_size < 0) throw InvalidArgument("--block-size must be >= 0 (0: the preset's)");
  if (!nn::is_gpt_model(c.model) && (c.block_size > 0 || c.dropout >= 0)) {
    throw InvalidArgument("--block-size and --dropout size GPT models; the " + c.model + " model has fixed sizes");
  }
  if (const auto gpt = gpt_config(c)) {
    nn::make_gpt(*gpt, 0);  // checks the sizes fit together
  }
  if (c.epochs < 1) throw InvalidArgument("--epochs must be at least 1");
  if (c.batch_size < 1 || c.batch_size > 65536) throw InvalidArgument("--batch-size must be in 1..65536");
  if (std::isinf(c.lr)) throw InvalidArgument("--lr is beyond FP32's range (the largest is 3.4e38)");
  if (!(c.lr > 0)) throw InvalidArgument("--lr must be a finite number > 0");
  if (!(c.clip_norm >= 0 && std::isfinite(c.clip_norm))) throw InvalidArgument("--clip-norm must be a finite number >= 0");
  if (!(c.weight_decay >= 0 && std::isfinite(c.weight_decay))) {
    throw InvalidArgument("--weight-decay must be a finite number >= 0");
  }
  if (!(c.momentum >= 0 && c.momentum < 1)) throw InvalidArgument("momentum must be in [0, 1)");
  if (c.log_every < 1) c.log_every = 1;
  if (!(c.bucket_mb > 0 && c.bucket_mb <= 4096)) throw InvalidArgument("--bucket-mb must be in (0, 4096]");
  if (!(c.comm_timeout_seconds >= 1 && c.comm_timeout_seconds <= 86400)) {
    throw InvalidArgument("--comm-timeout must be between 1 and 86400 seconds");
  }
  if (c.numerics_every < 0) throw InvalidArgument("--numerics-every must be >= 0 (0: off)");
  if (!c.inject_nonfinite.empty()) {
    const auto injector = telemetry::NonFiniteInjector::parse(c.inject_nonfinite);  // validates the spec
    std::string layers;  // ... and that it names a layer of the model (else the drill silently never fires)
    bool known = false;
    nn::Sequential model = build_model(c);
    for (const std::string& layer : layer_names(model)) {
      known = known || layer == injector.layer();
      layers += (layers.empty() ? "" : ", ") + layer;
    }
    if (!known) {
      throw InvalidArgument("--inject-nonfinite: the " + c.model + " model has no layer '" + injector.layer() +
                            "'; its layers: " + layers);
    }
  }
  if (c.tf32 && c.device == DeviceChoice::cpu) {
    throw InvalidArgument("--tf32 applies to the CUDA engine (--device cuda or auto); the CPU engine computes FP32 "
                          "products in FP32");
  }
  if (c.device == DeviceChoice::automatic) c.device = cuda::devices().empty() ? DeviceChoice::cpu : DeviceChoice::cuda;
  if (c.device == DeviceChoice::cpu) c.tf32 = false;  // auto found no device: there is no TF32 to use
  if (c.device == DeviceChoice::cuda) {
    if (cuda::devices().empty()) {
      throw NotAvailable("--device cuda: " + cuda::no_device_reason() + "; use --device cpu (or auto)");
    }
  }
  return c;
}

std::optional<nn::GptConfig> gpt_config(const TrainConfig& c) {
  std::optional<nn::GptConfig> gpt = nn::gpt_preset(c.model);
  if (!gpt) return gpt;
  if (c.block_size > 0) gpt->block_size = c.block_size;
  if (c.vocab_size > 0) gpt->vocab_size = c.vocab_size;
  if (c.dropout >= 0) gpt->dropout = c.dropout;
  return gpt;
}

nn::Sequential build_model(const TrainConfig& c) {
  if (const auto gpt = gpt_config(c)) return nn::make_gpt(*gpt, c.seed);
  return nn::make_model(c.model, c.seed);
}

std::vector<std::string> layer_names(nn::Sequential& model) {
  std::vector<std::string> names;
  nn::visit_layers(model, [&](nn::Layer& layer) { names.push_back(layer.name()); });
  return names;
}

}  // namespace mpx::train
