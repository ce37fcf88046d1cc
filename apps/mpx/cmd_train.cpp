// `mpx train`: mixed-precision training of the Fashion-MNIST models and of GPT language models. Parses
// flags and prints progress; the run (its directory, exporters, training and files) is
// mpx::train::run_training's.
#include <omp.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <thread>

#include <fmt/format.h>

#include "commands.h"
#include "validators.h"
#include "mpx/core/error.h"
#include "mpx/distributed/world.h"
#include "mpx/io/token_corpus.h"
#include "mpx/nn/gpt.h"
#include "mpx/train/run/training_run.h"

namespace mpx::cli {

namespace {

struct TrainOptions {
  train::RunOptions run;
  std::string optimizer = "adamw", schedule = "onecycle", device = "cpu", grad_comm = "fp32";  // parsed in run_train
  int threads = 0;
  bool no_progress = false;
  std::string init_from;  // a model file whose weights start a fresh run
  // Flags given on the command line (GPT runs take nanoGPT's recipe for those left out).
  std::function<bool(const char*)> given;
};

// nanoGPT's CPU recipe for what the command line leaves out: batch 12, AdamW lr 1e-3 with weight decay 0.1,
// cosine to lr/10 after 100 warm-up steps over the run's steps, 2,000 steps.
void apply_gpt_defaults(TrainOptions& o) {
  train::TrainConfig& c = o.run.config;
  if (!nn::is_gpt_model(c.model)) return;
  if (!o.given("--batch-size")) c.batch_size = 12;
  if (!o.given("--lr")) c.lr = 1e-3f;
  if (!o.given("--weight-decay")) c.weight_decay = 0.1f;
  if (!o.given("--schedule")) o.schedule = "cosine";
  if (!o.given("--min-lr")) c.min_lr = c.lr / 10;
  if (!o.given("--max-steps") && !o.given("--epochs")) c.max_steps = 2000;
  if (!o.given("--epochs")) c.epochs = 1000;  // --max-steps decides; epochs only bound it
  if (!o.given("--schedule-steps") && c.max_steps > 0) c.schedule_steps = c.max_steps;
  if (!o.given("--warmup-steps")) c.warmup_steps = std::min<std::int64_t>(100, std::max<std::int64_t>(c.schedule_steps, c.max_steps) / 10);
  if (!o.given("--eval-every")) c.eval_every = c.max_steps > 0 ? std::max<std::int64_t>(1, c.max_steps / 8) : 0;
  if (!o.given("--log-every")) c.log_every = 10;
}

// Ranks other than 0 write what they print to RUN/rank-K.log. Returns the terminal's stderr, kept for the
// one line that says why a rank stops.
int log_to_rank_file(const std::string& out, int rank) {
  const std::string path = out + "/rank-" + std::to_string(rank) + ".log";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError("cannot write " + path + ": " + std::strerror(errno));
  std::fflush(stdout);
  std::fflush(stderr);
  const int terminal = ::dup(STDERR_FILENO);
  ::dup2(fd, STDOUT_FILENO);
  ::dup2(fd, STDERR_FILENO);
  ::close(fd);
  return terminal;
}

std::string format_duration(double seconds) {
  const auto s = static_cast<long>(seconds + 0.5);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

// The run is the library's (train::run_training); this prints what it reports.
void run_train(TrainOptions& o) {
  if (o.threads > 0) omp_set_num_threads(o.threads);
  const unsigned cores = std::thread::hardware_concurrency();
  if (cores > 0 && o.threads > static_cast<int>(cores)) {
    fmt::print(stderr, "warning: --threads {} is more than this machine's {} cores: the threads take turns and "
               "training runs slower (often many times slower); use --threads {} or 0 (all)\n", o.threads, cores, cores);
  }
  apply_gpt_defaults(o);
  if (!o.init_from.empty()) {
    if (std::filesystem::is_directory(o.init_from) || train::is_checkpoint(o.init_from)) {
      throw InvalidArgument("--init-from takes a model file, whose weights start a new run; " + o.init_from +
                            " is a run directory or a checkpoint: continue it with --resume");
    }
    o.run.resume = o.init_from;
  }
  const bool language_model = nn::is_gpt_model(o.run.config.model);
  o.run.config.optimizer = train::parse_optimizer(o.optimizer);
  o.run.config.schedule = train::parse_schedule(o.schedule);
  o.run.config.device = train::parse_device(o.device);
  o.run.config.grad_comm = distributed::parse_grad_comm(o.grad_comm);
  o.run.world = distributed::world_from_environment();
  if (o.run.world.local_size > 1 && o.threads == 0 && cores > 0) {
    // N ranks on one host each taking every core would oversubscribe it: share the cores out (torchrun
    // sets OMP_NUM_THREADS=1 for the same reason).
    o.threads = std::max(1, static_cast<int>(cores) / o.run.world.local_size);
    omp_set_num_threads(o.threads);
  }
  const bool terminal = !o.no_progress && ::isatty(STDERR_FILENO);
  train::TrainConfig config;
  train::RunEvents events;
  std::string last_val;  // the latest validation loss, for the progress line
  std::string out_dir;
  int terminal_stderr = STDERR_FILENO;
  events.on_start = [&](const train::RunStart& s) {
    config = s.config;
    out_dir = s.out;
    if (s.rank > 0) terminal_stderr = log_to_rank_file(s.out, s.rank);
    for (const std::string& warning : s.warnings) fmt::print(stderr, "warning: {}\n", warning);
    if (!s.resumed_from.empty()) fmt::print("resuming from {}\n", s.resumed_from);
    if (!s.notice.empty()) fmt::print(stderr, "note: {}\n", s.notice);
    if (!s.warm_started_from.empty()) {
      fmt::print("starting from the weights in {} (a model file, not a checkpoint: the optimizer, schedule and "
                 "step count start fresh)\n", s.warm_started_from);
    }
    const std::string length = config.max_steps > 0 && language_model ? fmt::format("{} steps", config.max_steps)
                                                                      : fmt::format("{} epochs", config.epochs);
    fmt::print("training {} on {}: {}, {}, batch {}, {} {} lr {}, {} -> {}\n", config.model, s.data_description,
               config.precision, length, config.batch_size, name(config.optimizer), name(config.schedule), config.lr,
               config.device == train::DeviceChoice::cpu ? fmt::format("{} threads", omp_get_max_threads()) : s.device_name, s.out);
    if (!s.metrics_url.empty()) fmt::print("metrics: {}\n", s.metrics_url);
    if (s.world_size > 1) {
      fmt::print("data parallel: rank {} of {}, global batch {}, gradients all-reduced in {} (buckets of {} MB)\n", s.rank,
                 s.world_size, config.batch_size * s.world_size, distributed::name(config.grad_comm), config.bucket_mb);
    }
    std::fflush(stdout);
  };
  events.training.on_step = [&](const train::StepReport& r) {
    if (o.no_progress) return;
    const double remaining_images = static_cast<double>((r.total_steps - r.step) * config.batch_size);
    const double eta = r.images_per_second > 0 ? remaining_images / r.images_per_second : 0;
    const std::string line =
        language_model
            ? fmt::format("step {}/{} | {:.0f} tok/s | loss {:.4f} | val {} | scale {:g} | ETA {}", r.step, r.total_steps,
                          r.tokens_per_second, r.loss, last_val.empty() ? "-" : last_val, r.loss_scale,
                          format_duration(eta))
            : fmt::format("epoch {}/{} step {}/{} | {:.0f} img/s | loss {:.4f} | scale {:g} | ETA {}", r.epoch,
                          config.epochs, (r.step - 1) % r.steps_per_epoch + 1, r.steps_per_epoch, r.images_per_second,
                          r.loss, r.loss_scale, format_duration(eta));
    if (terminal) {
      fmt::print(stderr, "\r{:<100}", line);
    } else if (r.logged) {
      fmt::print(stderr, "{}\n", line);
    }
  };
  events.training.on_eval = [&](const train::EvalReport& e) {
    last_val = fmt::format("{:.4f}", e.evaluation.loss);
    if (terminal) fmt::print(stderr, "\r{:<100}\r", "");
    fmt::print("step {}: val loss {:.4f}, next-token accuracy {:.2f}%\n", e.step, e.evaluation.loss,
               100 * e.evaluation.accuracy);
    std::fflush(stdout);
  };
  events.training.on_epoch = [&](const train::EpochReport& e) {
    if (terminal) fmt::print(stderr, "\r{:<100}\r", "");
    if (language_model) {
      fmt::print("{}: train loss {:.4f}, val loss {:.4f}, {:.1f} s{}\n",
                 config.max_steps > 0 ? "end" : fmt::format("epoch {}", e.epoch), e.train_loss, e.test_loss, e.seconds,
                 e.skipped_steps ? fmt::format(", {} skipped steps", e.skipped_steps) : "");
      std::fflush(stdout);
      return;
    }
    fmt::print("epoch {}: train loss {:.4f}, test accuracy {:.2f}%, {:.1f} s, {:.0f} img/s{}\n", e.epoch, e.train_loss,
               100 * e.test_accuracy, e.seconds, e.images_per_second,
               e.skipped_steps ? fmt::format(", {} skipped steps", e.skipped_steps) : "");
    std::fflush(stdout);
  };
  events.training.on_nonfinite = [&](const telemetry::NonFiniteOrigin& origin) {
    if (terminal) fmt::print(stderr, "\r{:<100}\r", "");
    fmt::print(stderr, "non-finite values at {} (step skipped)\n", origin.describe());
  };
  events.on_serving_copy = [](const train::ServingCopy& c) {
    fmt::print("serving copy: {} ({} overflowed and clamped, {} to zero, max relative error {:.3g})\n", c.path,
               c.overflowed, c.underflowed, c.max_relative_error);
  };
  events.on_linger = [](double seconds) {
    fmt::print("metrics: serving the final values for {} s more\n", seconds);
    std::fflush(stdout);
  };
  train::RunOutcome outcome;
  try {
    outcome = train::run_training(o.run, events);
  } catch (const distributed::CommunicationError& e) {
    // One line on every surviving rank, then out at once: a collective may still hold threads in Gloo.
    std::string line = fmt::format("mpx: error: {}", e.what());
    if (!out_dir.empty() && config.checkpoint_every > 0) {
      line += fmt::format("; the last checkpoint in {} is intact: continue with --resume {}", out_dir, out_dir);
    }
    line += "\n";
    std::fflush(stdout);
    if (terminal_stderr != STDERR_FILENO && ::write(STDERR_FILENO, line.data(), line.size()) < 0) { /* the log is gone */ }
    if (::write(terminal_stderr, line.data(), line.size()) < 0) { /* nowhere left to say it */ }
    std::_Exit(2);
  }
  if (o.run.world.rank > 0) return;  // rank 0 reports the run
  const train::TrainResult& result = outcome.result;
  if (language_model) {
    fmt::print("done: val loss {:.4f} in {:.1f} s ({:.0f} tokens/s), {} skipped steps; summary in {}\n", result.test_loss,
               result.train_seconds, result.tokens_per_second, result.skipped_steps, outcome.summary_path);
    if (!result.recommendation.empty()) fmt::print("numerics: {}\n", result.recommendation);
    return;
  }
  fmt::print("done: test accuracy {:.2f}% in {:.1f} s ({:.0f} img/s), {} skipped steps; summary in {}\n",
             100 * result.test_accuracy, result.train_seconds, result.images_per_second, result.skipped_steps,
             outcome.summary_path);
  if (!result.recommendation.empty()) fmt::print("numerics: {}\n", result.recommendation);
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto o = std::make_shared<TrainOptions>();
  train::TrainConfig& c = o->run.config;
  CLI::App* cmd = app.add_subcommand("train", "Train a model in mixed precision: a CNN on Fashion-MNIST, or a GPT on text");
  cmd->add_option("--model", c.model, "cnn, mlp (Fashion-MNIST), gpt-tiny, gpt-char, gpt2 (language models)")
      ->check(CLI::IsMember({"cnn", "mlp", "gpt-tiny", "gpt-char", "gpt2"}))
      ->capture_default_str();
  cmd->add_option("--text", o->run.text,
                  std::string("GPT: train on this UTF-8 text, byte-level tokens, the last 10% held out (default ") +
                      io::kDefaultTextCorpus + ")");
  cmd->add_option("--tokens", o->run.tokens,
                  "GPT: train on a directory of llm.c token shards (*.bin; names with 'val' are the validation set)");
  cmd->add_option("--block-size", c.block_size, "GPT: context length (default: the preset's)")->check(positive());
  cmd->add_option("--dropout", c.dropout, "GPT: dropout probability (default: the preset's)")->check(CLI::Range(0.0, 0.99));
  cmd->add_option("--eval-every", c.eval_every, "Evaluate on the held-out set every N steps (0: per epoch only; GPT default: 8 times a run)")
      ->check(non_negative());
  cmd->add_option("--schedule-steps", c.schedule_steps, "Length of the learning-rate schedule in steps (default: the epochs', GPT: --max-steps)")
      ->check(non_negative());
  cmd->add_option("--warmup-steps", c.warmup_steps, "Cosine schedule: linear warm-up steps")->check(non_negative());
  cmd->add_option("--min-lr", c.min_lr, "Cosine schedule: the final learning rate")->check(non_negative());
  cmd->add_option("--precision", c.precision,
                  "32-true, 16-mixed, bf16-mixed, 16-true, bf16-true (fp32, fp16, bf16); default bf16-mixed where the "
                  "CPU has AVX512_BF16, else 16-mixed")
      ->check(non_empty());
  cmd->add_option("--epochs", c.epochs, "Passes over the training set")->check(positive())->capture_default_str();
  cmd->add_option("--batch-size", c.batch_size, "Images per step")->check(CLI::Range(1, 65536))->capture_default_str();
  cmd->add_option("--lr", c.lr, "Peak learning rate")->check(positive())->capture_default_str();
  cmd->add_option("--optimizer", o->optimizer, "adamw or sgd")->check(CLI::IsMember({"adamw", "sgd"}))->capture_default_str();
  cmd->add_option("--schedule", o->schedule, "onecycle, cosine or constant")
      ->check(CLI::IsMember({"onecycle", "cosine", "constant"}))
      ->capture_default_str();
  cmd->add_option("--weight-decay", c.weight_decay, "Weight decay")->check(non_negative())->capture_default_str();
  cmd->add_option("--clip-norm", c.clip_norm, "Clip the global gradient norm (0: off)")->check(non_negative());
  cmd->add_option("--device", o->device, "cpu, cuda or auto (cuda when a device is there)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))
      ->capture_default_str();
  cmd->add_flag("!--no-cuda-graph", c.cuda_graph, "On CUDA, launch every kernel of a step instead of replaying a graph");
  cmd->add_flag("--tf32", c.tf32,
                "On CUDA, FP32 products (32-true) through TF32 tensor cores, as torch's allow_tf32 (off: exact FP32)");
  cmd->add_option("--threads", o->threads, "CPU threads (0: all)")->check(non_negative());
  cmd->add_option("--seed", c.seed, "Random seed (initialisation, shuffling, dropout)")
      ->check(unsigned_64())
      ->capture_default_str();
  cmd->add_option("--out", o->run.out, "Run directory (default runs/<time>-<model>-<precision>)");
  cmd->add_option("--data", o->run.data, "Fashion-MNIST directory")->capture_default_str();
  cmd->add_option("--train-subset", c.train_subset, "Train on the first N images only (0: all)")->check(non_negative());
  cmd->add_option("--test-subset", c.test_subset, "Evaluate on the first N test images only (0: all)")->check(non_negative());
  cmd->add_option("--log-every", c.log_every, "Steps between metrics.jsonl records")->check(positive())->capture_default_str();
  cmd->add_flag("--record-samples", c.record_samples,
                "Record each step's sample indices in metrics.jsonl (to train a reference on the same data order)");
  cmd->add_flag("--no-progress", o->no_progress, "No progress line");
  cmd->add_option("--numerics-every", c.numerics_every,
                  "Steps between numerics samples (statistics of every tensor; 0: off)")
      ->check(non_negative())
      ->capture_default_str();
  cmd->add_option("--checkpoint-every", c.checkpoint_every,
                  "Write RUN/checkpoint.safetensors every N steps and at the end (0: never)")
      ->check(non_negative());
  cmd->add_option("--serving-dtype", o->run.serving_dtype,
                  "Also write RUN/model-<dtype>.safetensors: fp16, bf16 or fp8 (see mpx convert)");
  CLI::Option* resume = cmd->add_option("--resume", o->run.resume, "Continue from a run directory's checkpoint (or a checkpoint file); given a model file (mpx's or PyTorch's "
                  "state dict), start from its weights");
  cmd->add_option("--init-from", o->init_from,
                  "Start a new run from a model file's weights: mpx's, a PyTorch state dict, or a Hugging Face GPT-2 "
                  "safetensors file (names with or without 'transformer.')")
      ->excludes(resume);
  cmd->add_option("--max-steps", c.max_steps, "Stop after N steps in total (the schedule still spans --epochs)")
      ->check(non_negative());
  cmd->add_option("--metrics-port", o->run.metrics_port, "Serve Prometheus metrics on this port while training (0: off)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--metrics-bind", o->run.metrics_bind, "Address the metrics endpoint listens on")
      ->check(ip_address())
      ->capture_default_str();
  cmd->add_option("--metrics-linger", o->run.metrics_linger_seconds, "Keep serving metrics this many seconds after training")
      ->check(non_negative());
  cmd->add_flag("--detect-anomaly", c.detect_anomaly,
                "Stop at the first step that goes non-finite, naming the layer and pass where it began");
  cmd->add_option("--inject-nonfinite", c.inject_nonfinite,
                  "Drill: make one layer's output non-finite, LAYER:forward|backward:STEP[:COUNT[:nan]]")
      ->check(non_empty());
  cmd->add_option("--grad-comm", o->grad_comm,
                  "Data parallel (mpirun -np N / torchrun): how gradients are all-reduced: fp32, bf16, fp16, or "
                  "bf16+ef / fp16+ef (16-bit with error feedback)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16", "bf16+ef", "fp16+ef"}))
      ->capture_default_str();
  cmd->add_option("--bucket-mb", c.bucket_mb, "Data parallel: gradient bucket size in MB of FP32 gradients")
      ->check(CLI::Range(0.001, 4096.0))
      ->capture_default_str();
  cmd->add_option("--comm-timeout", c.comm_timeout_seconds,
                  "Data parallel: seconds a collective waits for a rank before the run names it and stops")
      ->check(CLI::Range(1.0, 86400.0))
      ->capture_default_str();
  o->given = [cmd](const char* flag) { return cmd->count(flag) > 0; };
  cmd->callback([o] { run_train(*o); });
}

}  // namespace mpx::cli
