// Where a run's numbers go while it trains: metrics.jsonl (steps, epochs, numerics samples, non-finite
// origins, loss-scale events), TensorBoard event files and the Prometheus exporter — the same numbers in
// each. The CLI only prints progress; this records. Also the summary.json object of a finished run.
#pragma once

#include <nlohmann/json.hpp>

#include "mpx/telemetry/prometheus_exporter.h"
#include "mpx/telemetry/tensorboard_writer.h"
#include "mpx/train/run/run_files.h"
#include "mpx/train/trainer.h"

namespace mpx::train {

class RunRecorder {
 public:
  RunRecorder(RunDirectory& run, telemetry::PrometheusExporter& metrics, telemetry::TensorBoardWriter& tensorboard,
              const TrainConfig& config);

  // Every step goes to Prometheus; steps at --log-every, the last one and skipped ones to the files.
  // Returns whether this step was logged to the files.
  bool step(const StepReport& r);
  void epoch(const EpochReport& e, const MemoryTracker& memory);
  void eval(const EvalReport& e);  // --eval-every
  void numerics(const telemetry::NumericsSample& sample);
  void nonfinite(const telemetry::NonFiniteOrigin& origin);
  void memory_peaks(const MemoryTracker& memory);

 private:
  RunDirectory& run_;
  telemetry::PrometheusExporter& metrics_;
  telemetry::TensorBoardWriter& tensorboard_;
  const TrainConfig& config_;
  float previous_scale_ = 0;
  double previous_elapsed_ = 0;
};

// summary.json of a finished run (the fields docs/CLI.md lists).
nlohmann::json summary_json(const TrainConfig& config, const TrainResult& result, const MemoryTracker& memory,
                            int threads);

}  // namespace mpx::train
