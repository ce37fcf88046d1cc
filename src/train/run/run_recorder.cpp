#include "mpx/train/run/run_recorder.h"

#include "mpx/nn/gpt.h"
#include "mpx/telemetry/json.h"

namespace mpx::train {

using nn::is_gpt_model;

RunRecorder::RunRecorder(RunDirectory& run, telemetry::PrometheusExporter& metrics,
                         telemetry::TensorBoardWriter& tensorboard, const TrainConfig& config)
    : run_(run), metrics_(metrics), tensorboard_(tensorboard), config_(config) {}

bool RunRecorder::step(const StepReport& r) {
  // elapsed_seconds restarts with a resumed run: never a negative duration.
  const double seconds = r.elapsed_seconds >= previous_elapsed_ ? r.elapsed_seconds - previous_elapsed_ : r.elapsed_seconds;
  previous_elapsed_ = r.elapsed_seconds;
  metrics_.record_step(r.step, r.loss, r.lr, r.loss_scale, r.skipped, config_.batch_size, seconds);
  const bool log = r.step % config_.log_every == 0 || r.step == r.total_steps || r.skipped;
  if (log) {
    tensorboard_.scalar("train/loss", r.loss, r.step);
    tensorboard_.scalar("train/learning_rate", r.lr, r.step);
    tensorboard_.scalar("train/loss_scale", r.loss_scale, r.step);
    tensorboard_.scalar("train/images_per_second", r.images_per_second, r.step);
    nlohmann::json record = {{"type", "step"}, {"step", r.step}, {"epoch", r.epoch}, {"loss", json_number(r.loss)},
                             {"lr", r.lr}, {"loss_scale", r.loss_scale}, {"skipped", r.skipped},
                             {"images_per_second", r.images_per_second}, {"elapsed_seconds", r.elapsed_seconds}};
    if (r.comm) {
      record["comm"] = {{"mode", distributed::name(config_.grad_comm)}, {"bytes_sent", r.comm->bytes_sent},
                        {"seconds", r.comm->comm_seconds}, {"wait_seconds", r.comm->wait_seconds},
                        {"buckets", r.comm->buckets}};
    }
    if (r.tokens_per_second > 0) {
      record["tokens_per_second"] = r.tokens_per_second;
      tensorboard_.scalar("train/tokens_per_second", r.tokens_per_second, r.step);
    }
    run_.append_metrics(record);
  }
  if (r.comm) {
    const distributed::CommStats& c = *r.comm;
    metrics_.record_allreduce(distributed::name(config_.grad_comm), static_cast<double>(c.bytes_sent), c.comm_seconds,
                              c.wait_seconds, c.relative_error, c.residual_norm);
    if (c.relative_error) {  // M9: every --numerics-every steps
      tensorboard_.scalar("comm/allreduce_relative_error", *c.relative_error, r.step);
      run_.append_metrics({{"type", "allreduce"}, {"step", r.step}, {"mode", distributed::name(config_.grad_comm)},
                           {"relative_error", *c.relative_error}, {"residual_norm", c.residual_norm.value_or(0.0)},
                           {"bytes_sent", c.bytes_sent}, {"payload_bytes", c.payload_bytes},
                           {"comm_seconds", c.comm_seconds}, {"wait_seconds", c.wait_seconds}, {"buckets", c.buckets}});
    }
  }
  if (config_.record_samples) {
    run_.append_metrics({{"type", "samples"}, {"step", r.step}, {"indices", std::vector<std::int64_t>(r.samples.begin(), r.samples.end())}});
  }
  if (previous_scale_ != 0 && r.loss_scale != previous_scale_) {
    run_.append_metrics({{"type", "loss_scale"}, {"step", r.step},
                         {"event", r.loss_scale > previous_scale_ ? "growth" : "backoff"}, {"scale", r.loss_scale}});
  }
  previous_scale_ = r.loss_scale;
  return log;
}

void RunRecorder::epoch(const EpochReport& e, const MemoryTracker& memory) {
  metrics_.record_epoch(e.epoch, e.train_loss, e.test_accuracy);
  memory_peaks(memory);
  tensorboard_.scalar("test/accuracy", e.test_accuracy, e.epoch);
  tensorboard_.scalar("train/epoch_loss", e.train_loss, e.epoch);
  tensorboard_.flush();
  run_.append_metrics({{"type", "epoch"}, {"epoch", e.epoch}, {"train_loss", json_number(e.train_loss)},
                       {"test_accuracy", e.test_accuracy}, {"test_loss", json_number(e.test_loss)}, {"seconds", e.seconds},
                       {"images_per_second", e.images_per_second}, {"skipped_steps", e.skipped_steps}});
}

void RunRecorder::eval(const EvalReport& e) {
  tensorboard_.scalar("val/loss", e.evaluation.loss, e.step);
  tensorboard_.scalar("val/accuracy", e.evaluation.accuracy, e.step);
  run_.append_metrics({{"type", "eval"}, {"step", e.step}, {"val_loss", json_number(e.evaluation.loss)},
                       {"val_accuracy", e.evaluation.accuracy}});
}

void RunRecorder::numerics(const telemetry::NumericsSample& sample) {
  metrics_.record_sample(sample);
  tensorboard_.sample(sample);
  run_.append_metrics(telemetry::to_json(sample));
}

void RunRecorder::nonfinite(const telemetry::NonFiniteOrigin& origin) {
  metrics_.record_nonfinite(origin);
  tensorboard_.scalar("train/nonfinite_step", 1, origin.step);
  nlohmann::json record = telemetry::to_json(origin);
  record["type"] = "nonfinite";
  run_.append_metrics(record);
}

void RunRecorder::memory_peaks(const MemoryTracker& memory) {
  for (int c = 0; c < static_cast<int>(MemoryCategory::count); ++c) {
    const auto category = static_cast<MemoryCategory>(c);
    metrics_.record_memory_peak(std::string(name(category)), static_cast<double>(memory.peak(category)));
  }
}

nlohmann::json summary_json(const TrainConfig& config, const TrainResult& result, const MemoryTracker& memory,
                            int threads) {
  nlohmann::json peak = nlohmann::json::object();
  for (int c = 0; c < static_cast<int>(MemoryCategory::count); ++c) {
    const auto category = static_cast<MemoryCategory>(c);
    peak[std::string(name(category))] = memory.peak(category);
  }
  peak["total"] = memory.peak_total();
  nlohmann::json summary = {
      {"precision", config.precision}, {"model", config.model}, {"epochs", config.epochs},
      {"steps", result.steps}, {"batch_size", config.batch_size}, {"test_accuracy", result.test_accuracy},
      {"train_seconds", result.train_seconds}, {"images_per_second", result.images_per_second},
      {"final_loss", json_number(result.final_loss)}, {"peak_bytes", peak},
      {"skipped_steps", result.skipped_steps}, {"loss_scaling", result.loss_scaling},
      {"final_loss_scale", result.loss_scaling ? result.loss_scaler.scale : 1.0f}, {"seed", config.seed},
      {"threads", threads}, {"device", name(config.device)}, {"tf32", config.tf32}};
  summary["test_loss"] = json_number(result.test_loss);
  if (is_gpt_model(config.model)) {  // a language model: the held-out loss is the headline
    summary["val_loss"] = json_number(result.test_loss);
    summary["tokens_per_second"] = result.tokens_per_second;
    summary["block_size"] = gpt_config(config)->block_size;
  }
  if (result.loss_scaling) {
    summary["loss_scaler"] = {{"growths", result.loss_scaler.growths}, {"backoffs", result.loss_scaler.backoffs},
                              {"growth_tracker", result.loss_scaler.growth_tracker}};
  }
  nlohmann::json origins = nlohmann::json::array(), headroom = nlohmann::json::array();
  for (const auto& origin : result.nonfinite_origins) origins.push_back(telemetry::to_json(origin));
  for (const auto& h : result.headroom) headroom.push_back(telemetry::to_json(h));
  summary["numerics"] = {{"every", config.numerics_every}, {"nonfinite_steps", result.nonfinite_steps},
                         {"first_nonfinite", origins}, {"headroom", headroom},
                         {"recommendation", result.recommendation}};
  return summary;
}

}  // namespace mpx::train
