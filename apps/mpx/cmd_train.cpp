// `mpx train`: mixed-precision training of Fashion-MNIST. Parses flags, prints progress, writes the run
// directory; the work is mpx::train::Trainer's.
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <thread>

#include <fmt/format.h>

#include "commands.h"
#include "mpx/artifacts/convert.h"
#include "mpx/build_info.h"
#include "mpx/core/error.h"
#include "mpx/numeric/convert.h"
#include "mpx/telemetry/prometheus_exporter.h"
#include "mpx/telemetry/tensorboard_writer.h"
#include "mpx/train/model_file.h"
#include "mpx/train/run_files.h"
#include "mpx/train/run_recorder.h"
#include "mpx/train/trainer.h"

namespace mpx::cli {

namespace {

struct TrainOptions {
  train::TrainConfig config;
  int threads = 0;
  std::string out;
  std::string data = io::kFashionMnistDefaultDir;
  bool no_progress = false;
  std::string resume;
  std::string serving;
  int metrics_port = 0;
  std::string metrics_bind = "127.0.0.1";
  double metrics_linger = 0;
};

std::string default_run_name(const train::TrainConfig& c) {
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", std::localtime(&now));
  return std::string("runs/") + stamp + "-" + c.model + "-" + c.precision;
}

std::string format_duration(double seconds) {
  const auto s = static_cast<long>(seconds + 0.5);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

nlohmann::json config_json(const TrainOptions& o, const train::TrainConfig& c) {
  return {{"model", c.model}, {"precision", c.precision}, {"epochs", c.epochs}, {"batch_size", c.batch_size},
          {"lr", c.lr}, {"optimizer", c.optimizer}, {"weight_decay", c.weight_decay}, {"momentum", c.momentum},
          {"schedule", c.schedule}, {"clip_norm", c.clip_norm}, {"seed", c.seed}, {"device", c.device},
          {"tf32", c.tf32}, {"threads", omp_get_max_threads()}, {"data", o.data}, {"train_subset", c.train_subset},
          {"test_subset", c.test_subset}, {"mpx_version", build::kVersion},
          {"cpu_conversion_path", std::string(numeric::name(numeric::best_cpu_path()))}};
}

void run_train(TrainOptions& o) {
  if (o.threads > 0) omp_set_num_threads(o.threads);
  train::TrainConfig settings = o.config;
  // --resume DIR continues that run in place (unless --out says otherwise), checkpointing as it goes.
  std::string resume_file = o.resume;
  if (!o.resume.empty() && std::filesystem::is_directory(o.resume)) resume_file = o.resume + "/checkpoint.safetensors";
  const train::TrainConfig resolved = train::resolve(settings);
  const std::string out = !o.out.empty() ? o.out : !o.resume.empty() && std::filesystem::is_directory(o.resume)
                                                       ? o.resume
                                                       : default_run_name(resolved);
  settings.checkpoint_path = (std::filesystem::path(out) / "checkpoint.safetensors").string();
  const train::TrainConfig config = train::resolve(settings);
  train::RunDirectory run(out);  // fails before loading data or training if it cannot be written
  // Also before any training: a port in use is a clear error now, not after the data is loaded.
  telemetry::PrometheusExporter metrics(o.metrics_bind, o.metrics_port);
  telemetry::TensorBoardWriter tensorboard(run.file("tensorboard"));
  const io::FashionMnist data = io::load_fashion_mnist(o.data);
  train::Trainer trainer(config, data);
  if (!resume_file.empty() && train::is_checkpoint(resume_file)) {
    trainer.load_checkpoint(resume_file);
    fmt::print("resuming from {}\n", resume_file);
  } else if (!resume_file.empty()) {
    const std::string notice = trainer.load_weights(resume_file);
    if (!notice.empty()) fmt::print(stderr, "note: {}\n", notice);
    fmt::print("starting from the weights in {} (a model file, not a checkpoint: the optimizer, schedule and "
               "step count start fresh)\n", resume_file);
  }
  train::write_json_atomic(run.file("config.json"), config_json(o, config));

  const bool terminal = !o.no_progress && ::isatty(STDERR_FILENO);
  fmt::print("training {} on Fashion-MNIST: {}, {} epochs, batch {}, {} {} lr {}, {} -> {}\n", config.model,
             config.precision, config.epochs, config.batch_size, config.optimizer, config.schedule, config.lr,
             config.device == "cpu" ? fmt::format("{} threads", omp_get_max_threads()) : trainer.device_name(), out);
  if (!metrics.url().empty()) fmt::print("metrics: {}\n", metrics.url());
  std::fflush(stdout);

  train::RunRecorder recorder(run, metrics, tensorboard, config);
  train::Callbacks callbacks;
  callbacks.on_step = [&](const train::StepReport& r) {
    const bool logged = recorder.step(r);
    if (o.no_progress) return;
    const double remaining_images = static_cast<double>((r.total_steps - r.step) * config.batch_size);
    const double eta = r.images_per_second > 0 ? remaining_images / r.images_per_second : 0;
    const std::string line =
        fmt::format("epoch {}/{} step {}/{} | {:.0f} img/s | loss {:.4f} | scale {:g} | ETA {}", r.epoch,
                    config.epochs, (r.step - 1) % r.steps_per_epoch + 1, r.steps_per_epoch, r.images_per_second,
                    r.loss, r.loss_scale, format_duration(eta));
    if (terminal) {
      fmt::print(stderr, "\r{:<100}", line);
    } else if (logged) {
      fmt::print(stderr, "{}\n", line);
    }
  };
  callbacks.on_epoch = [&](const train::EpochReport& e) {
    if (terminal) fmt::print(stderr, "\r{:<100}\r", "");
    fmt::print("epoch {}: train loss {:.4f}, test accuracy {:.2f}%, {:.1f} s, {:.0f} img/s{}\n", e.epoch, e.train_loss,
               100 * e.test_accuracy, e.seconds, e.images_per_second,
               e.skipped_steps ? fmt::format(", {} skipped steps", e.skipped_steps) : "");
    std::fflush(stdout);
    recorder.epoch(e, trainer.memory());
  };
  callbacks.on_numerics = [&](const telemetry::NumericsSample& sample) { recorder.numerics(sample); };
  callbacks.on_nonfinite = [&](const telemetry::NonFiniteOrigin& origin) {
    recorder.nonfinite(origin);
    if (terminal) fmt::print(stderr, "\r{:<100}\r", "");
    fmt::print(stderr, "non-finite values at {} (step skipped)\n", origin.describe());
  };

  const train::TrainResult result = trainer.run(callbacks);
  recorder.memory_peaks(trainer.memory());
  nlohmann::json summary = train::summary_json(config, result, trainer.memory(), omp_get_max_threads());
  // How to feed the model (PyTorch users need it): pixels / 255, minus the mean, divided by the std.
  const io::PixelNormalisation input = io::pixel_normalisation(data.train);
  train::save_model(run.file("model.safetensors"), trainer.model(),
                    {{"mpx.model", config.model}, {"mpx.precision", config.precision},
                     {"mpx.input_mean", fmt::format("{:.9g}", input.mean)},
                     {"mpx.input_std", fmt::format("{:.9g}", 1.0f / input.inv_std)},
                     {"mpx.test_accuracy", fmt::format("{:.6f}", result.test_accuracy)},
                     {"mpx.version", build::kVersion}});
  if (!o.serving.empty()) {
    // The serving copy: the FP32 model converted (normalisation kept in FP32), overflow clamped and counted.
    const DType serving = artifacts::parse_target_dtype(o.serving);
    const std::string path = run.file("model-" + std::string(name(serving)) + ".safetensors");
    const artifacts::ConvertReport r = artifacts::convert_checkpoint(run.file("model.safetensors"), path,
                                                                     {serving, {}, artifacts::OnOverflow::clamp});
    summary["serving_copy"] = {{"file", path}, {"dtype", std::string(name(serving))},
                               {"overflowed", r.total.overflowed}, {"underflowed_to_zero", r.total.underflowed},
                               {"subnormal", r.total.subnormal}, {"max_relative_error", r.total.max_relative_error}};
    fmt::print("serving copy: {} ({} overflowed and clamped, {} to zero, max relative error {:.3g})\n", path,
               r.total.overflowed, r.total.underflowed, r.total.max_relative_error);
  }
  train::write_json_atomic(run.file("summary.json"), summary);
  fmt::print("done: test accuracy {:.2f}% in {:.1f} s ({:.0f} img/s), {} skipped steps; summary in {}\n",
             100 * result.test_accuracy, result.train_seconds, result.images_per_second, result.skipped_steps,
             run.file("summary.json"));
  if (!result.recommendation.empty()) fmt::print("numerics: {}\n", result.recommendation);
  if (!metrics.url().empty() && o.metrics_linger > 0) {
    fmt::print("metrics: serving the final values for {} s more\n", o.metrics_linger);
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::duration<double>(o.metrics_linger));
  }
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto o = std::make_shared<TrainOptions>();
  train::TrainConfig& c = o->config;
  CLI::App* cmd = app.add_subcommand("train", "Train a model on Fashion-MNIST in mixed precision");
  cmd->add_option("--model", c.model, "cnn or mlp")->check(CLI::IsMember({"cnn", "mlp"}))->capture_default_str();
  cmd->add_option("--precision", c.precision,
                  "32-true, 16-mixed, bf16-mixed, 16-true, bf16-true (fp32, fp16, bf16); default bf16-mixed where the "
                  "CPU has AVX512_BF16, else 16-mixed");
  cmd->add_option("--epochs", c.epochs, "Passes over the training set")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--batch-size", c.batch_size, "Images per step")->check(CLI::Range(1, 65536))->capture_default_str();
  cmd->add_option("--lr", c.lr, "Peak learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--optimizer", c.optimizer, "adamw or sgd")->check(CLI::IsMember({"adamw", "sgd"}))->capture_default_str();
  cmd->add_option("--schedule", c.schedule, "onecycle, cosine or constant")
      ->check(CLI::IsMember({"onecycle", "cosine", "constant"}))
      ->capture_default_str();
  cmd->add_option("--weight-decay", c.weight_decay, "Weight decay")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--clip-norm", c.clip_norm, "Clip the global gradient norm (0: off)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", c.device, "cpu, cuda or auto (cuda when a device is there)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))
      ->capture_default_str();
  cmd->add_flag("!--no-cuda-graph", c.cuda_graph, "On CUDA, launch every kernel of a step instead of replaying a graph");
  cmd->add_flag("--tf32", c.tf32,
                "On CUDA, FP32 products (32-true) through TF32 tensor cores, as torch's allow_tf32 (off: exact FP32)");
  cmd->add_option("--threads", o->threads, "CPU threads (0: all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", c.seed, "Random seed (initialisation, shuffling, dropout)")->capture_default_str();
  cmd->add_option("--out", o->out, "Run directory (default runs/<time>-<model>-<precision>)");
  cmd->add_option("--data", o->data, "Fashion-MNIST directory")->capture_default_str();
  cmd->add_option("--train-subset", c.train_subset, "Train on the first N images only (0: all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--test-subset", c.test_subset, "Evaluate on the first N test images only (0: all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--log-every", c.log_every, "Steps between metrics.jsonl records")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_flag("--no-progress", o->no_progress, "No progress line");
  cmd->add_option("--numerics-every", c.numerics_every,
                  "Steps between numerics samples (statistics of every tensor; 0: off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--checkpoint-every", c.checkpoint_every,
                  "Write RUN/checkpoint.safetensors every N steps and at the end (0: never)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--serving-dtype", o->serving,
                  "Also write RUN/model-<dtype>.safetensors: fp16, bf16 or fp8 (see mpx convert)");
  cmd->add_option("--resume", o->resume, "Continue from a run directory's checkpoint (or a checkpoint file); given a model file (mpx's or PyTorch's "
                  "state dict), start from its weights");
  cmd->add_option("--max-steps", c.max_steps, "Stop after N steps in total (the schedule still spans --epochs)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--metrics-port", o->metrics_port, "Serve Prometheus metrics on this port while training (0: off)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--metrics-bind", o->metrics_bind, "Address the metrics endpoint listens on")->capture_default_str();
  cmd->add_option("--metrics-linger", o->metrics_linger, "Keep serving metrics this many seconds after training")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--detect-anomaly", c.detect_anomaly,
                "Stop at the first step that goes non-finite, naming the layer and pass where it began");
  cmd->add_option("--inject-nonfinite", c.inject_nonfinite,
                  "Drill: make one layer's output non-finite, LAYER:forward|backward:STEP[:COUNT[:nan]]");
  cmd->callback([o] { run_train(*o); });
}

}  // namespace mpx::cli
