// Training and numerics metrics for Prometheus (prometheus-cpp): served at http://BIND:PORT/metrics while a
// run trains (`mpx train --metrics-port P [--metrics-bind ADDR]`). Names follow Prometheus conventions:
// `mpx_` prefix, base units (seconds, bytes, ratios), counters ending in `_total`, and low-cardinality
// labels (layer, kind, category, event). The same numbers go to metrics.jsonl.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "mpx/telemetry/numerics_monitor.h"

namespace mpx::telemetry {

class PrometheusExporter {
 public:
  // port 0: collect without serving (text() still works). Throws IoError naming the address when the port
  // is in use or cannot be bound, before any training starts.
  PrometheusExporter(const std::string& bind_address, int port);
  ~PrometheusExporter();
  PrometheusExporter(const PrometheusExporter&) = delete;
  PrometheusExporter& operator=(const PrometheusExporter&) = delete;

  void record_step(std::int64_t step, double loss, double lr, double loss_scale, bool skipped, std::int64_t images,
                   double step_seconds);
  // One step's gradient all-reduce (data parallel); relative_error and residual_norm on the steps that measure
  // them (a gauge keeps its last measured value in between).
  void record_allreduce(const std::string& mode, double bytes, double seconds, double wait_seconds,
                        std::optional<double> relative_error, std::optional<double> residual_norm);
  void record_epoch(int epoch, double train_loss, double test_accuracy);
  void record_sample(const NumericsSample& sample);
  void record_nonfinite(const NonFiniteOrigin& origin);
  void record_memory_peak(const std::string& category, double bytes);

  std::string text() const;  // the exposition text /metrics serves
  std::string url() const;   // http://BIND:PORT/metrics, empty when not serving

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpx::telemetry
