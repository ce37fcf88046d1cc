// A whole training run as `mpx train` does it, in the library so that the CLI, `mpx serve` and tests share
// it: resolve the settings, make the run directory (before anything slow), start the exporters, load the
// data, resume or warm-start, train, then write config.json, metrics, the model file, the serving copy
// and summary.json. Prints nothing: what a user sees arrives through RunEvents.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpx/distributed/world.h"
#include "mpx/io/fashion_mnist.h"
#include "mpx/io/token_corpus.h"
#include "mpx/train/trainer.h"

namespace mpx::train {

struct RunOptions {
  TrainConfig config;
  std::string out;                                // run directory; default runs/<time>-<model>-<precision>
  std::string data = io::kFashionMnistDefaultDir;  // Fashion-MNIST directory (image models)
  // GPT models: a UTF-8 text (byte-level tokens; default io::kDefaultTextCorpus) or a directory of llm.c
  // token shards (GPT-2 token ids), one of the two.
  std::string text, tokens;
  std::string resume;                             // a run directory, a checkpoint or a model file
  std::string serving_dtype;                      // also write model-<dtype>.safetensors (fp16, bf16, fp8)
  int metrics_port = 0;                           // Prometheus endpoint (0: off)
  std::string metrics_bind = "127.0.0.1";
  double metrics_linger_seconds = 0;  // keep serving metrics after training
  // Data parallel (world.size > 1): this process is one rank. Rank 0 writes the run directory's files and
  // checkpoints; every rank checks at the start that all run with the same settings.
  distributed::WorldInfo world;
};

// What a run tells whoever started it, in order.
struct RunStart {
  TrainConfig config;       // resolved
  std::string out;          // the run directory
  std::string device_name;  // "cpu" or "cuda:0 (...)"
  std::string metrics_url;  // empty when off
  std::string resumed_from, warm_started_from, notice;  // what --resume did ("" when nothing)
  std::vector<std::string> warnings;                   // settings that cannot do what they say
  std::string data_description;  // "Fashion-MNIST", "data/bible-kjv.txt (4.0M training tokens, ...)"
  int rank = 0, world_size = 1;   // data parallel: which rank reports (only rank 0 writes the run's files)
};

struct ServingCopy {
  std::string path, dtype;
  std::uint64_t overflowed = 0, underflowed = 0, subnormal = 0;
  double max_relative_error = 0;
};

struct RunEvents {
  std::function<void(const RunStart&)> on_start;  // after data, resume and config.json; before step 1
  Callbacks training;                             // every step, epoch, numerics sample, non-finite step
  std::function<void(const ServingCopy&)> on_serving_copy;
  std::function<void(double seconds)> on_linger;  // before keeping the metrics endpoint up after training
};

struct RunOutcome {
  TrainResult result;
  std::string out, summary_path;
  nlohmann::json summary;
};

// Throws InvalidArgument for bad settings, IoError for files and directories (before training when it
// can), NotAvailable for a device that is not there, TrainingDiverged when training cannot go on.
RunOutcome run_training(const RunOptions& options, const RunEvents& events = {});

// runs/<local time>-<model>-<precision>
std::string default_run_name(const TrainConfig& resolved);

}  // namespace mpx::train
