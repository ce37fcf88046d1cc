// Trainer checkpoints: one safetensors file with the FP32 weights, optimizer state and BatchNorm statistics
// as tensors, and the rest (position, optimizer step, loss scaler, counters, configuration) as JSON in the
// metadata under "mpx.checkpoint". Written atomically; the data's SHA-256 is verified on load. Weights and their
// optimizer state are in PyTorch's layout, as in the model file (pytorch_layout.h).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <cstdint>
#include <span>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "../divergence_rule.h"
#include "mpx/core/error.h"
#include "mpx/io/safetensors.h"
#include "mpx/telemetry/json.h"
#include "mpx/train/run/model_file.h"
#include "mpx/train/run/pytorch_layout.h"
#include "mpx/train/trainer.h"

namespace mpx::train {

namespace {

constexpr const char* kStateKey = "mpx.checkpoint";
// SHA-256 of the state's JSON text: the data checksum covers the tensors only, this covers the rest.
constexpr const char* kStateSha256Key = "mpx.checkpoint_sha256";

std::string state_sha256(const std::string& text) {
  return io::sha256_hex(std::as_bytes(std::span<const char>(text.data(), text.size())));
}

// A field of the state, range-checked: an IoError names the field, its value and the allowed range.
class StateReader {
 public:
  StateReader(const nlohmann::json& state, std::string path) : state_(state), path_(std::move(path)) {}
  std::int64_t integer(const char* key, std::int64_t low, std::int64_t high, const nlohmann::json* in = nullptr) const {
    const nlohmann::json& v = field(key, in);
    if (!v.is_number_integer()) fail(key, v, "is not an integer");
    const bool is_unsigned = v.is_number_unsigned();
    const std::int64_t x = is_unsigned ? static_cast<std::int64_t>(std::min<std::uint64_t>(v.get<std::uint64_t>(), INT64_MAX))
                                       : v.get<std::int64_t>();
    if (x < low || x > high) {
      fail(key, v, "is outside " + std::to_string(low) + " .. " + std::to_string(high));
    }
    return x;
  }
  double real(const char* key, double low, double high, const nlohmann::json* in = nullptr) const {
    const nlohmann::json& v = field(key, in);
    if (!v.is_number()) fail(key, v, "is not a number");
    const double x = v.get<double>();
    if (!(x >= low && x <= high)) fail(key, v, "is outside " + nlohmann::json(low).dump() + " .. " + nlohmann::json(high).dump());
    return x;
  }
  [[noreturn]] void fail(const char* key, const nlohmann::json& v, const std::string& why) const {
    throw IoError(path_ + ": damaged checkpoint state: " + key + " = " + v.dump() + " " + why +
                  " for this run; the checkpoint cannot be resumed");
  }

 private:
  const nlohmann::json& field(const char* key, const nlohmann::json* in) const {
    const nlohmann::json& object = in ? *in : state_;
    if (!object.is_object() || !object.contains(key)) {
      throw IoError(path_ + ": damaged checkpoint state: " + key + " is missing; the checkpoint cannot be resumed");
    }
    return object[key];
  }
  const nlohmann::json& state_;
  std::string path_;
};

// The settings a run's trajectory depends on: a resume must use the same.
nlohmann::json trajectory_settings(const TrainConfig& c) {
  return {{"model", c.model},         {"precision", c.precision},   {"epochs", c.epochs},
          {"batch_size", c.batch_size}, {"lr", c.lr},               {"optimizer", name(c.optimizer)},
          {"weight_decay", c.weight_decay}, {"momentum", c.momentum}, {"schedule", name(c.schedule)},
          {"clip_norm", c.clip_norm}, {"seed", c.seed},             {"train_subset", c.train_subset},
          {"loss_scaling", c.loss_scaling ? nlohmann::json(*c.loss_scaling) : nlohmann::json("default")}};
}

// What else decides a GPT run's trajectory (absent for the image models, whose checkpoints predate them).
nlohmann::json settings_of(const TrainConfig& c) {
  nlohmann::json s = trajectory_settings(c);
  if (const auto gpt = gpt_config(c)) {
    s["gpt"] = {{"n_layer", gpt->n_layer}, {"n_head", gpt->n_head}, {"n_embd", gpt->n_embd},
                {"block_size", gpt->block_size}, {"vocab_size", gpt->vocab_size}, {"dropout", gpt->dropout}};
    s["schedule_steps"] = c.schedule_steps;
    s["warmup_steps"] = c.warmup_steps;
    s["min_lr"] = c.min_lr;
  }
  return s;
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

std::string Trainer::residual_path(const std::string& checkpoint) const {
  const std::string suffix = ".safetensors";
  const bool ends = checkpoint.size() > suffix.size() && checkpoint.ends_with(suffix);
  return (ends ? checkpoint.substr(0, checkpoint.size() - suffix.size()) : checkpoint) + "-ef-rank-" +
         std::to_string(rank()) + suffix;
}

void Trainer::save_residuals(const std::string& checkpoint) {
  const std::vector<distributed::GradientSync::Residual> residuals = sync_->residuals();
  std::vector<io::TensorToWrite> tensors;
  for (const auto& [name, r] : residuals) {
    tensors.push_back({name, DType::f32, {static_cast<std::int64_t>(r.size())}, r.data()});
  }
  io::write_safetensors(residual_path(checkpoint), tensors,
                        {{"mpx.ef.step", std::to_string(position_.global_step)},
                         {"mpx.ef.scale", fmt::format("{:.9g}", sync_->residual_scale())},
                         {"mpx.ef.grad_comm", distributed::name(config_.grad_comm)},
                         {"mpx.ef.rank", std::to_string(rank())}});
}

void Trainer::load_residuals(const std::string& checkpoint, const std::string& written_with, int written_world) {
  const std::string mode = distributed::name(config_.grad_comm);
  const auto restart = [&](const std::string& why) {
    resume_notice_ += (resume_notice_.empty() ? "" : "; ") + why + ": the error-feedback residuals start from zero";
  };
  if (written_with != mode) return restart("--grad-comm is " + mode + ", the checkpoint's run had " + written_with);
  if (written_world != world_size()) return restart("the world size changed");
  const std::string path = residual_path(checkpoint);
  if (!std::filesystem::exists(path)) return restart(path + " is missing");
  const io::SafetensorsFile file = io::SafetensorsFile::read(path);
  const auto step = file.metadata().find("mpx.ef.step");
  if (step == file.metadata().end() || step->second != std::to_string(position_.global_step)) {
    return restart(path + " is from another step than the checkpoint");
  }
  const auto scale = file.metadata().find("mpx.ef.scale");
  float residual_scale = 0;
  if (scale != file.metadata().end()) {
    const char* text = scale->second.c_str();
    char* end = nullptr;
    residual_scale = std::strtof(text, &end);
    if (end == text || *end != '\0') residual_scale = 0;
  }
  if (!(residual_scale > 0 && std::isfinite(residual_scale))) {
    throw IoError(path + ": damaged residual file: mpx.ef.scale is missing or not a positive number; delete the file "
                  "to resume with the residuals from zero");
  }
  std::vector<distributed::GradientSync::Residual> residuals = sync_->residuals();  // the names and sizes
  for (auto& [name, r] : residuals) {
    const io::SafetensorsEntry* e = file.find(name);
    if (!e || e->dtype != DType::f32 || e->shape != Shape{static_cast<std::int64_t>(r.size())}) {
      throw IoError(path + ": residual '" + name + "' is missing or has another shape than this model's " + name);
    }
    std::memcpy(r.data(), file.data(*e).data(), r.size() * sizeof(float));
  }
  sync_->load_residuals(residuals);
  sync_->set_residual_scale(residual_scale);
}

void Trainer::save_checkpoint(const std::string& path) {
  if (path.empty()) throw InvalidArgument("checkpointing needs a path (TrainConfig::checkpoint_path)");
  if (sync_ && distributed::error_feedback(config_.grad_comm)) save_residuals(path);  // every rank its own
  if (rank() != 0) {  // rank 0 writes the checkpoint; the barrier: a step's files are all there or it did not end
    group_->barrier();
    return;
  }
  std::vector<io::TensorToWrite> tensors;
  nn::Sequential& model = this->model();  // in host memory (a device run's copy, brought up to date)
  FileOrder order(model);  // holds the reordered copies until the file is written
  for (const CheckpointTensor& c : checkpoint_tensors(model, model.parameters())) {
    tensors.push_back({c.name, c.tensor->dtype(), order.file_shape(c.parameter, *c.tensor),
                       order.for_writing(c.parameter, *c.tensor)});
  }
  nlohmann::json state = {{"epoch", position_.epoch},
                          {"step_in_epoch", position_.step_in_epoch},
                          {"global_step", position_.global_step},
                          {"optimizer_steps", optimizer_->optimizer_steps()},
                          {"skipped_steps", position_.skipped_steps},
                          {"nonfinite_steps", position_.nonfinite_steps},
                          {"images_seen", position_.images_seen},
                          {"train_seconds", position_.train_seconds},
                          {"last_loss", telemetry::json_number(position_.last_loss)},
                          {"consecutive_nonfinite", divergence_->in_a_row()},
                          {"world_size", world_size()},
                          {"grad_comm", distributed::name(config_.grad_comm)},
                          {"settings", settings_of(config_)}};
  if (loss_scaling_) {
    const amp::LossScalerState s = optimizer_->scaler_state();
    state["loss_scaler"] = {{"scale", s.scale},         {"growth_tracker", s.growth_tracker}, {"steps", s.steps},
                            {"skipped_steps", s.skipped_steps}, {"growths", s.growths},       {"backoffs", s.backoffs}};
  }
  const std::string text = state.dump();
  io::write_safetensors(path, tensors, {{kStateKey, text}, {kStateSha256Key, state_sha256(text)}, {"format", "pt"},
                                        {kLayoutKey, kPytorchLayout}});
  if (group_) group_->barrier();
}

void Trainer::load_checkpoint(const std::string& path) {
  const io::SafetensorsFile file = io::SafetensorsFile::read(path);
  const auto it = file.metadata().find(kStateKey);
  if (it == file.metadata().end()) throw IoError(path + ": not an mpx checkpoint (no " + std::string(kStateKey) + ")");
  if (checkpoint_state_status(file) == "mismatch") {
    throw IoError(path + ": checksum mismatch: the checkpoint's training state differs from the one recorded when "
                  "it was written (the file is damaged or was edited)");
  }
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    throw IoError(path + ": damaged checkpoint state: " + e.what());
  }
  if (!state.is_object() || !state.contains("settings") || !state["settings"].is_object()) {
    throw IoError(path + ": damaged checkpoint state: no settings object");
  }
  const nlohmann::json expected = settings_of(config_);
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
    if (e->shape != order.file_shape(c.parameter, *t) || e->dtype != t->dtype()) {
      throw IoError(path + ": tensor '" + c.name + "' is " + std::string(name(e->dtype)) + " " + to_string(e->shape) +
                    " in the checkpoint but " + std::string(name(t->dtype())) + " " +
                    to_string(order.file_shape(c.parameter, *t)) +
                    " in this model");
    }
    order.read_into(c.parameter, reinterpret_cast<const float*>(file.data(*e).data()), layout, *c.tensor);
  }
  // Every field against what this run can have reached: the position is one of its steps, the counters
  // add up, the loss scale is a positive finite number.
  const StateReader in(state, path);
  const std::int64_t images = train_set_->size();
  // Written by another world size: its position is validated in its own steps, then carried over below.
  const int written_world = state.contains("world_size") ? static_cast<int>(in.integer("world_size", 1, 1 << 16)) : 1;
  const std::int64_t written_batch = config_.batch_size * written_world;
  const std::int64_t steps_per_epoch = train::steps_per_epoch(images, config_.batch_size, written_world);
  const std::int64_t schedule_steps = steps_per_epoch * config_.epochs;
  Position p;
  p.epoch = static_cast<int>(in.integer("epoch", 1, static_cast<std::int64_t>(config_.epochs) + 1));
  p.step_in_epoch = in.integer("step_in_epoch", 0, p.epoch > config_.epochs ? 0 : steps_per_epoch - 1);
  const std::int64_t reached = (p.epoch - 1) * steps_per_epoch + p.step_in_epoch;
  p.global_step = in.integer("global_step", reached, reached);
  if (p.global_step > schedule_steps) in.fail("global_step", state["global_step"], "is past the run's last step");
  p.skipped_steps = in.integer("skipped_steps", 0, p.global_step);
  p.nonfinite_steps = in.integer("nonfinite_steps", 0, p.global_step);
  const std::int64_t seen = (p.epoch - 1) * images + p.step_in_epoch * written_batch;
  p.images_seen = in.integer("images_seen", seen, seen);
  p.train_seconds = in.real("train_seconds", 0, 1e12);
  if (state.contains("last_loss") && state["last_loss"].is_number()) p.last_loss = state["last_loss"].get<float>();
  const std::int64_t applied = p.global_step - p.skipped_steps;
  const std::int64_t optimizer_steps = in.integer("optimizer_steps", applied, applied);
  const std::int64_t in_a_row = in.integer("consecutive_nonfinite", 0, p.nonfinite_steps);
  if (loss_scaling_ != state.contains("loss_scaler")) throw IoError(path + ": loss scaling differs from this run");
  amp::LossScalerState ls;
  if (loss_scaling_) {
    const nlohmann::json* s = &state["loss_scaler"];
    ls.scale = static_cast<float>(in.real("scale", 1.17549435e-38, 3.4028234663852886e38, s));
    ls.growth_tracker = static_cast<int>(in.integer("growth_tracker", 0, INT32_MAX, s));
    ls.steps = static_cast<std::uint64_t>(in.integer("steps", p.global_step, p.global_step, s));
    const auto steps = static_cast<std::int64_t>(ls.steps);
    ls.skipped_steps = static_cast<std::uint64_t>(in.integer("skipped_steps", p.skipped_steps, p.skipped_steps, s));
    ls.growths = static_cast<std::uint64_t>(in.integer("growths", 0, steps, s));
    ls.backoffs = static_cast<std::uint64_t>(in.integer("backoffs", 0, steps, s));
  }
  // Non-finite weights, moments or statistics never come out of a run that carried on: refuse them.
  for (const CheckpointTensor& c : checkpoint_tensors(model, model.parameters())) {
    const float* v = c.tensor->data_as<float>();
    for (std::int64_t i = 0; i < c.tensor->numel(); ++i) {
      if (!std::isfinite(v[i])) {
        throw IoError(path + ": tensor '" + c.name + "' holds a non-finite value (" + std::to_string(v[i]) +
                      " at element " + std::to_string(i) + "); the checkpoint cannot be resumed");
      }
    }
  }
  resume_notice_.clear();
  if (written_world != world_size()) {
    // The data order is the global one: continue the epoch at the first sample the old world had not reached.
    const std::int64_t samples = p.step_in_epoch * written_batch;
    p.step_in_epoch = std::min(samples / global_batch(), std::max<std::int64_t>(0, this->steps_per_epoch() - 1));
    resume_notice_ = fmt::format("the checkpoint was written by {} rank{} (global batch {}), this run has {} (global batch "
                                 "{}): the data order stays the same, epoch {} continues at sample {}{}",
                                 written_world, written_world == 1 ? "" : "s", written_batch, world_size(),
                                 global_batch(), p.epoch, p.step_in_epoch * global_batch(),
                                 samples % global_batch() ? fmt::format(" ({} samples again)", samples % global_batch()) : "");
  }
  position_ = p;
  if (sync_ && distributed::error_feedback(config_.grad_comm)) {
    load_residuals(path, state.contains("grad_comm") && state["grad_comm"].is_string() ? state["grad_comm"].get<std::string>()
                                                                                       : "fp32",
                   written_world);
  } else if (state.contains("grad_comm") && state["grad_comm"].is_string() &&
             state["grad_comm"].get<std::string>() != distributed::name(config_.grad_comm) && world_size() > 1) {
    resume_notice_ += (resume_notice_.empty() ? "" : "; ") + std::string("--grad-comm is ") +
                      distributed::name(config_.grad_comm) + ", the checkpoint's run had " +
                      state["grad_comm"].get<std::string>();
  }
  divergence_->restore(in_a_row);
  optimizer_->load(ls, optimizer_steps);
  copy_state_to_device();  // and the working copies from the masters
}

std::string checkpoint_state_status(const io::SafetensorsFile& file) {
  const auto state = file.metadata().find(kStateKey);
  const auto sum = file.metadata().find(kStateSha256Key);
  if (state == file.metadata().end() || sum == file.metadata().end()) return "not recorded";
  return state_sha256(state->second) == sum->second ? "verified" : "mismatch";
}

bool is_checkpoint(const std::string& path) { return io::SafetensorsFile::read(path).metadata().count(kStateKey) > 0; }

std::string Trainer::load_weights(const std::string& path) {
  if (!host_model_) return load_model(path, model_, ctx_).notice;
  const std::string notice = load_model(path, *host_model_, *host_ctx_).notice;
  copy_state_to_device();
  return notice;
}

}  // namespace mpx::train
