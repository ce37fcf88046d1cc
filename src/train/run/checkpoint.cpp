// Trainer checkpoints: one safetensors file with the FP32 weights, optimizer state and BatchNorm statistics
// as tensors, and the rest (position, optimizer step, loss scaler, counters, configuration) as JSON in the
// metadata under "mpx.checkpoint". Written atomically; the data's SHA-256 is verified on load. Weights and their
// optimizer state are in PyTorch's layout, as in the model file (pytorch_layout.h).
#include <nlohmann/json.hpp>

#include "../divergence_rule.h"
#include "mpx/core/error.h"
#include "mpx/io/safetensors.h"
#include "mpx/train/run/model_file.h"
#include "mpx/train/run/pytorch_layout.h"
#include "mpx/train/trainer.h"

namespace mpx::train {

namespace {

constexpr const char* kStateKey = "mpx.checkpoint";

// The settings a run's trajectory depends on: a resume must use the same.
nlohmann::json trajectory_settings(const TrainConfig& c) {
  return {{"model", c.model},         {"precision", c.precision},   {"epochs", c.epochs},
          {"batch_size", c.batch_size}, {"lr", c.lr},               {"optimizer", name(c.optimizer)},
          {"weight_decay", c.weight_decay}, {"momentum", c.momentum}, {"schedule", name(c.schedule)},
          {"clip_norm", c.clip_norm}, {"seed", c.seed},             {"train_subset", c.train_subset},
          {"loss_scaling", c.loss_scaling ? nlohmann::json(*c.loss_scaling) : nlohmann::json("default")}};
}

// One tensor of the checkpoint: its name, the engine's tensor behind it, and the parameter whose layout it has.
struct CheckpointTensor {
  std::string name;
  Tensor* tensor;
  std::string parameter;  // empty for buffers
};

std::vector<CheckpointTensor> checkpoint_tensors(nn::Sequential& model, const std::vector<nn::Parameter*>& params) {
  std::vector<CheckpointTensor> out;
  for (nn::Parameter* p : params) {
    out.push_back({p->name, &p->value, p->name});
    if (p->state1.defined()) out.push_back({"optimizer." + p->name + ".state1", &p->state1, p->name});
    if (p->state2.defined()) out.push_back({"optimizer." + p->name + ".state2", &p->state2, p->name});
  }
  for (const auto& [buffer_name, t] : model.buffers()) out.push_back({buffer_name, t, {}});
  return out;
}

}  // namespace

void Trainer::save_checkpoint(const std::string& path) {
  if (path.empty()) throw InvalidArgument("checkpointing needs a path (TrainConfig::checkpoint_path)");
  std::vector<io::TensorToWrite> tensors;
  nn::Sequential& model = this->model();  // in host memory (a device run's copy, brought up to date)
  FileOrder order(model);  // holds the reordered copies until the file is written
  for (const CheckpointTensor& c : checkpoint_tensors(model, model.parameters())) {
    tensors.push_back({c.name, c.tensor->dtype(), c.tensor->shape(), order.for_writing(c.parameter, *c.tensor)});
  }
  nlohmann::json state = {{"epoch", position_.epoch},
                          {"step_in_epoch", position_.step_in_epoch},
                          {"global_step", position_.global_step},
                          {"optimizer_steps", optimizer_->optimizer_steps()},
                          {"skipped_steps", position_.skipped_steps},
                          {"nonfinite_steps", position_.nonfinite_steps},
                          {"images_seen", position_.images_seen},
                          {"train_seconds", position_.train_seconds},
                          {"consecutive_nonfinite", divergence_->in_a_row()},
                          {"settings", trajectory_settings(config_)}};
  if (loss_scaling_) {
    const amp::LossScalerState s = optimizer_->scaler_state();
    state["loss_scaler"] = {{"scale", s.scale},         {"growth_tracker", s.growth_tracker}, {"steps", s.steps},
                            {"skipped_steps", s.skipped_steps}, {"growths", s.growths},       {"backoffs", s.backoffs}};
  }
  io::write_safetensors(path, tensors, {{kStateKey, state.dump()}, {"format", "pt"}, {kLayoutKey, kPytorchLayout}});
}

void Trainer::load_checkpoint(const std::string& path) {
  const io::SafetensorsFile file = io::SafetensorsFile::read(path);
  const auto it = file.metadata().find(kStateKey);
  if (it == file.metadata().end()) throw IoError(path + ": not an mpx checkpoint (no " + std::string(kStateKey) + ")");
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    throw IoError(path + ": damaged checkpoint state: " + e.what());
  }
  const nlohmann::json expected = trajectory_settings(config_);
  for (const auto& [key, value] : expected.items()) {
    if (!state["settings"].contains(key) || state["settings"][key] != value) {
      throw IoError(path + ": the checkpoint was trained with " + key + " = " +
                    (state["settings"].contains(key) ? state["settings"][key].dump() : "(unset)") +
                    ", this run has " + value.dump() + "; resume with the same settings");
    }
  }
  // Checkpoints written before the layout key hold every tensor in memory order: read them as they are.
  const FileLayout layout = file_layout(file.metadata(), path);
  nn::Sequential& model = host_model_ ? *host_model_ : model_;
  const FileOrder order(model);
  for (const CheckpointTensor& c : checkpoint_tensors(model, model.parameters())) {
    const Tensor* t = c.tensor;
    const io::SafetensorsEntry* e = file.find(c.name);
    if (!e) throw IoError(path + ": tensor '" + c.name + "' is missing from the checkpoint");
    if (e->shape != t->shape() || e->dtype != t->dtype()) {
      throw IoError(path + ": tensor '" + c.name + "' is " + std::string(name(e->dtype)) + " " + to_string(e->shape) +
                    " in the checkpoint but " + std::string(name(t->dtype())) + " " + to_string(t->shape()) +
                    " in this model");
    }
    order.read_into(c.parameter, reinterpret_cast<const float*>(file.data(*e).data()), layout, *c.tensor);
  }
  copy_state_to_device();  // and the working copies from the masters
  try {
    position_ = {state.at("epoch").get<int>(),          state.at("step_in_epoch").get<std::int64_t>(),
                 state.at("global_step").get<std::int64_t>(), state.at("skipped_steps").get<std::int64_t>(),
                 state.at("nonfinite_steps").get<std::int64_t>(), state.at("images_seen").get<std::int64_t>(),
                 state.at("train_seconds").get<double>()};
    const auto optimizer_steps = state.at("optimizer_steps").get<std::int64_t>();
    divergence_->restore(state.at("consecutive_nonfinite").get<std::int64_t>());
    if (loss_scaling_ != state.contains("loss_scaler")) throw IoError(path + ": loss scaling differs from this run");
    amp::LossScalerState ls;
    if (loss_scaling_) {
      const nlohmann::json& s = state["loss_scaler"];
      ls.scale = s.at("scale").get<float>();
      ls.growth_tracker = s.at("growth_tracker").get<int>();
      ls.steps = s.at("steps").get<std::uint64_t>();
      ls.skipped_steps = s.at("skipped_steps").get<std::uint64_t>();
      ls.growths = s.at("growths").get<std::uint64_t>();
      ls.backoffs = s.at("backoffs").get<std::uint64_t>();
    }
    optimizer_->load(ls, optimizer_steps);
  } catch (const nlohmann::json::exception& e) {
    throw IoError(path + ": damaged checkpoint state: " + e.what());
  }
}

bool is_checkpoint(const std::string& path) { return io::SafetensorsFile::read(path).metadata().count(kStateKey) > 0; }

std::string Trainer::load_weights(const std::string& path) {
  if (!host_model_) return load_model(path, model_, ctx_).notice;
  const std::string notice = load_model(path, *host_model_, *host_ctx_).notice;
  copy_state_to_device();
  return notice;
}

}  // namespace mpx::train
