#include "mpx/train/run/training_run.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <optional>
#include <thread>

#include <fmt/format.h>

#include "mpx/artifacts/convert.h"
#include "mpx/build_info.h"
#include "mpx/core/error.h"
#include "mpx/backend/cuda.h"
#include "mpx/distributed/process_group.h"
#include "mpx/numeric/convert.h"
#include "mpx/telemetry/prometheus_exporter.h"
#include "mpx/telemetry/tensorboard_writer.h"
#include "mpx/train/run/model_file.h"
#include "mpx/train/run/run_files.h"
#include "mpx/train/run/run_recorder.h"

namespace mpx::train {

std::string default_run_name(const TrainConfig& c) {
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", std::localtime(&now));
  return std::string("runs/") + stamp + "-" + c.model + "-" + c.precision;
}

namespace {

// The validation windows a GPT run evaluates on unless --test-subset says otherwise (nanoGPT evaluates
// 20 batches of 12 in its CPU recipe; the same count, taken in order so that every evaluation sees the
// same text).
constexpr std::int64_t kDefaultValidationWindows = 240;

// What a run trains and evaluates on: Fashion-MNIST images, or token windows of a text or token shards.
struct RunData {
  std::optional<io::FashionMnist> images;
  std::optional<io::TokenCorpus> corpus;
  std::unique_ptr<Dataset> train, test;
  std::string description;
};

RunData load_run_data(const RunOptions& o, TrainConfig& config) {
  RunData d;
  const std::optional<nn::GptConfig> gpt = gpt_config(config);
  if (!gpt) {
    if (!o.text.empty() || !o.tokens.empty()) {
      throw InvalidArgument("--text and --tokens feed GPT models (--model gpt-tiny, gpt-char or gpt2); the " +
                            config.model + " model trains on Fashion-MNIST (--data)");
    }
    d.images = io::load_fashion_mnist(o.data);
    const io::PixelNormalisation normalise = io::pixel_normalisation(d.images->train);
    d.train = std::make_unique<ImageDataset>(d.images->train, normalise, config.train_subset);
    d.test = std::make_unique<ImageDataset>(d.images->test, normalise, config.test_subset);
    d.description = "Fashion-MNIST";
    return d;
  }
  if (!o.text.empty() && !o.tokens.empty()) throw InvalidArgument("--text and --tokens: give one of them");
  if (!o.tokens.empty()) {
    d.corpus = io::read_token_shards(o.tokens);
  } else {
    const std::string path = o.text.empty() ? io::kDefaultTextCorpus : o.text;
    if (o.text.empty() && !std::filesystem::exists(path)) {
      throw IoError(path + ": the default text corpus is missing; scripts/setup.sh writes it (from Debian's bible-kjv), "
                    "or pass --text FILE (any UTF-8 text) or --tokens DIR (llm.c token shards)");
    }
    d.corpus = io::read_text_corpus(path);
  }
  // The model's vocabulary is the data's (GPT-2's 50257 padded to a multiple of 64 for the kernels).
  if (config.vocab_size == 0) config.vocab_size = d.corpus->vocabulary == 256 ? 256 : (d.corpus->vocabulary + 63) / 64 * 64;
  if (config.vocab_size < d.corpus->vocabulary) {
    throw InvalidArgument("the model's vocabulary of " + std::to_string(config.vocab_size) + " is smaller than the data's " +
                          std::to_string(d.corpus->vocabulary));
  }
  const std::int64_t block = gpt_config(config)->block_size;
  const std::int64_t validation = config.test_subset > 0 ? config.test_subset : kDefaultValidationWindows;
  d.train = std::make_unique<TokenWindows>(d.corpus->train, block, d.corpus->source + "'s training split", config.train_subset);
  d.test = std::make_unique<TokenWindows>(d.corpus->validation, block, d.corpus->source + "'s validation split", validation);
  d.description = fmt::format("{} ({} training tokens, {} validation windows of {})", d.corpus->source,
                              d.corpus->train->size(), d.test->size(), block);
  return d;
}

nlohmann::json config_json(const RunOptions& o, const TrainConfig& c) {
  nlohmann::json j = {{"model", c.model}, {"precision", c.precision}, {"epochs", c.epochs}, {"batch_size", c.batch_size},
          {"lr", c.lr}, {"optimizer", name(c.optimizer)}, {"weight_decay", c.weight_decay}, {"momentum", c.momentum},
          {"schedule", name(c.schedule)}, {"clip_norm", c.clip_norm}, {"seed", c.seed}, {"device", name(c.device)},
          {"tf32", c.tf32}, {"threads", omp_get_max_threads()}, {"data", o.data}, {"train_subset", c.train_subset},
          {"test_subset", c.test_subset}, {"mpx_version", build::kVersion},
          {"cpu_conversion_path", std::string(numeric::name(numeric::best_cpu_path()))},
          {"world_size", o.world.size}, {"grad_comm", distributed::name(c.grad_comm)}, {"bucket_mb", c.bucket_mb}};
  if (const auto gpt = gpt_config(c)) {
    j.erase("data");
    j["text"] = o.tokens.empty() ? (o.text.empty() ? io::kDefaultTextCorpus : o.text) : "";
    j["tokens"] = o.tokens;
    j["gpt"] = {{"n_layer", gpt->n_layer}, {"n_head", gpt->n_head}, {"n_embd", gpt->n_embd},
                {"block_size", gpt->block_size}, {"vocab_size", gpt->vocab_size}, {"dropout", gpt->dropout}};
    j["max_steps"] = c.max_steps;
    j["schedule_steps"] = c.schedule_steps;
    j["eval_every"] = c.eval_every;
  }
  return j;
}

// Every rank must train the same model the same way: each sends its settings, and a difference names the
// setting and the rank (on every rank, so that all stop with the same message).
void check_same_settings(distributed::ProcessGroup& group, const RunOptions& o, const TrainConfig& c) {
  nlohmann::json mine = config_json(o, c);
  mine.erase("threads");              // a rank may use fewer cores
  mine.erase("cpu_conversion_path");  // every path gives the same bits: machines may differ
  mine["resume"] = o.resume;
  mine["comm_timeout"] = c.comm_timeout_seconds;
  mine["checkpoint_every"] = c.checkpoint_every;
  mine["numerics_every"] = c.numerics_every;
  mine["max_steps"] = c.max_steps;
  mine["inject_nonfinite"] = c.inject_nonfinite;
  const std::vector<std::string> all = group.exchange("settings", mine.dump());
  const nlohmann::json first = nlohmann::json::parse(all.front());
  for (std::size_t r = 1; r < all.size(); ++r) {
    const nlohmann::json other = nlohmann::json::parse(all[r]);
    for (const auto& [key, value] : first.items()) {
      if (!other.contains(key) || other[key] != value) {
        throw InvalidArgument(fmt::format("rank {} was started with {} = {}, rank 0 with {}: every rank must run with the same "
                                          "settings (start them all with one command)",
                                          r, key, other.contains(key) ? other[key].dump() : "(unset)", value.dump()));
      }
    }
  }
}

// The serving copy: the FP32 model converted (normalisation kept in FP32), overflow clamped and counted.
ServingCopy write_serving_copy(const RunDirectory& run, DType serving) {
  ServingCopy copy;
  copy.path = run.file("model-" + std::string(name(serving)) + ".safetensors");
  copy.dtype = name(serving);
  const artifacts::ConvertReport r =
      artifacts::convert_checkpoint(run.file("model.safetensors"), copy.path, {serving, {}, artifacts::OnOverflow::clamp});
  copy.overflowed = r.total.overflowed;
  copy.underflowed = r.total.underflowed;
  copy.subnormal = r.total.subnormal;
  copy.max_relative_error = r.total.max_relative_error;
  if (!r.written) {
    throw IoError("no serving copy written: " + run.file("model.safetensors") + " holds " +
                  std::to_string(r.total.nonfinite) + " non-finite values");
  }
  return copy;
}

}  // namespace

RunOutcome run_training(const RunOptions& o, const RunEvents& events) {
  TrainConfig settings = o.config;
  // --resume DIR continues that run in place (unless --out says otherwise), checkpointing as it goes.
  const bool resume_dir = !o.resume.empty() && std::filesystem::is_directory(o.resume);
  const std::string resume_file = resume_dir ? o.resume + "/checkpoint.safetensors" : o.resume;
  const TrainConfig resolved = resolve(settings);
  // Data parallel: the ranks connect first, agree on the settings and take rank 0's run directory.
  std::unique_ptr<distributed::ProcessGroup> group;
  if (o.world.distributed()) {
    group = std::make_unique<distributed::ProcessGroup>(distributed::ProcessGroup::Options{
        o.world.rank, o.world.size, o.world.master_addr, o.world.master_port,
        std::chrono::milliseconds(static_cast<std::int64_t>(resolved.comm_timeout_seconds * 1000))});
    check_same_settings(*group, o, resolved);
  }
  const bool writer = !group || group->rank() == 0;  // rank 0 writes the run's files
  RunOutcome outcome;
  outcome.out = !o.out.empty() ? o.out : resume_dir ? o.resume : default_run_name(resolved);
  if (group) outcome.out = group->broadcast("run_directory", outcome.out);
  settings.checkpoint_path = (std::filesystem::path(outcome.out) / "checkpoint.safetensors").string();
  TrainConfig config = resolve(settings);
  if (group && config.device == DeviceChoice::cuda) config.device_index = distributed::device_for_rank(o.world, static_cast<int>(cuda::devices().size()));
  // Every setting is checked before anything slow or anything written.
  const bool serving = !o.serving_dtype.empty();
  const DType serving_dtype = serving ? artifacts::parse_target_dtype(o.serving_dtype, "--serving-dtype") : DType::f16;
  std::optional<RunDirectory> run;  // fails before loading data or training if it cannot be written
  if (writer) run.emplace(outcome.out);
  // Also before any training: a port in use is a clear error now, not after the data is loaded.
  telemetry::PrometheusExporter metrics(o.metrics_bind, writer ? o.metrics_port : 0);
  RunData data = load_run_data(o, config);
  Trainer trainer(config, std::move(data.train), std::move(data.test));
  if (group) trainer.join(*group);
  RunStart start;
  start.data_description = data.description;
  start.rank = o.world.rank;
  start.world_size = o.world.size;
  std::optional<RunDirectory::Resume> continued;  // resumed from this directory's own checkpoint
  if (!resume_file.empty() && is_checkpoint(resume_file)) {
    trainer.load_checkpoint(resume_file);
    start.resumed_from = resume_file;
    start.notice = trainer.resume_notice();
    std::error_code ec;
    if (std::filesystem::equivalent(std::filesystem::path(resume_file).parent_path(), outcome.out, ec)) {
      continued = RunDirectory::Resume{trainer.steps_done(), trainer.epoch()};
    }
  } else if (!resume_file.empty()) {
    start.notice = trainer.load_weights(resume_file);
    start.warm_started_from = resume_file;
  }
  // Everything checked: the first writes into the run directory.
  std::optional<telemetry::TensorBoardWriter> tensorboard;
  std::optional<RunRecorder> recorder;
  if (writer) {
    run->begin(continued);
    tensorboard.emplace(run->file("tensorboard"));
    write_json_atomic(run->file("config.json"), config_json(o, config));
    recorder.emplace(*run, metrics, *tensorboard, config);
  }
  if (group) group->barrier();  // the run directory is there before any rank writes into it
  start.config = config;
  start.out = outcome.out;
  start.device_name = trainer.device_name();
  start.warnings = trainer.warnings();
  start.metrics_url = metrics.url();
  if (events.on_start) events.on_start(start);

  const Callbacks& user = events.training;
  Callbacks callbacks;
  callbacks.on_step = [&](const StepReport& r) {
    StepReport reported = r;
    reported.logged = recorder ? recorder->step(r) : r.step % config.log_every == 0 || r.step == r.total_steps;
    if (user.on_step) user.on_step(reported);
  };
  callbacks.on_epoch = [&](const EpochReport& e) {
    if (user.on_epoch) user.on_epoch(e);
    if (recorder) recorder->epoch(e, trainer.memory());
  };
  callbacks.on_eval = [&](const EvalReport& e) {
    if (recorder) recorder->eval(e);
    if (user.on_eval) user.on_eval(e);
  };
  callbacks.on_numerics = [&](const telemetry::NumericsSample& sample) {
    if (recorder) recorder->numerics(sample);
    if (user.on_numerics) user.on_numerics(sample);
  };
  callbacks.on_nonfinite = [&](const telemetry::NonFiniteOrigin& origin) {
    if (recorder) recorder->nonfinite(origin);
    if (user.on_nonfinite) user.on_nonfinite(origin);
  };

  try {
    outcome.result = trainer.run(callbacks);
  } catch (const TrainingDiverged& e) {
    // The run's records say where and why it stopped, so that `mpx report` shows a diverged run too.
    if (!writer) throw;
    recorder->nonfinite(e.origin());
    TrainResult stopped;
    stopped.steps = e.origin().step;
    stopped.final_loss = NAN;
    stopped.test_accuracy = NAN;
    stopped.nonfinite_steps = 1;
    stopped.nonfinite_origins.push_back(e.origin());
    nlohmann::json summary = summary_json(config, stopped, trainer.memory(), omp_get_max_threads());
    summary["status"] = "diverged";
    summary["error"] = e.what();
    write_json_atomic(run->file("summary.json"), summary);
    throw;
  }
  const TrainResult& result = outcome.result;
  if (!writer) return outcome;  // the others' work ends with training
  recorder->memory_peaks(trainer.memory());
  outcome.summary = summary_json(config, result, trainer.memory(), omp_get_max_threads());
  outcome.summary["status"] = "completed";
  if (group) outcome.summary["distributed"] = {{"world_size", group->size()}, {"grad_comm", distributed::name(config.grad_comm)},
                                               {"bucket_mb", config.bucket_mb}, {"launcher", o.world.launcher}};
  std::map<std::string, std::string> metadata = {{"mpx.model", config.model}, {"mpx.precision", config.precision},
                                                 {"mpx.test_accuracy", fmt::format("{:.6f}", result.test_accuracy)},
                                                 {"mpx.version", build::kVersion}};
  if (data.images) {
    // How to feed the model (PyTorch users need it): pixels / 255, minus the mean, divided by the std.
    const io::PixelNormalisation input = io::pixel_normalisation(data.images->train);
    metadata["mpx.input_mean"] = fmt::format("{:.9g}", input.mean);
    metadata["mpx.input_std"] = fmt::format("{:.9g}", 1.0f / input.inv_std);
  } else {
    metadata[kGptKey] = gpt_metadata(*gpt_config(config));
    metadata["mpx.tokenizer"] = data.corpus->vocabulary == 256 ? "bytes" : "gpt2";
    metadata["mpx.val_loss"] = fmt::format("{:.6f}", result.test_loss);
  }
  save_model(run->file("model.safetensors"), trainer.model(), metadata);
  if (serving) {
    const ServingCopy copy = write_serving_copy(*run, serving_dtype);
    outcome.summary["serving_copy"] = {{"file", copy.path}, {"dtype", copy.dtype}, {"overflowed", copy.overflowed},
                                       {"underflowed_to_zero", copy.underflowed}, {"subnormal", copy.subnormal},
                                       {"max_relative_error", copy.max_relative_error}};
    if (events.on_serving_copy) events.on_serving_copy(copy);
  }
  outcome.summary_path = run->file("summary.json");
  write_json_atomic(outcome.summary_path, outcome.summary);
  if (!metrics.url().empty() && o.metrics_linger_seconds > 0) {
    if (events.on_linger) events.on_linger(o.metrics_linger_seconds);
    std::this_thread::sleep_for(std::chrono::duration<double>(o.metrics_linger_seconds));
  }
  return outcome;
}

}  // namespace mpx::train
