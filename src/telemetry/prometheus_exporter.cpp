#include "mpx/telemetry/prometheus_exporter.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include "mpx/core/error.h"

namespace mpx::telemetry {

using prometheus::BuildCounter;
using prometheus::BuildGauge;

struct PrometheusExporter::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<prometheus::Exposer> exposer;
  std::string url;
  double last_scale = 0;
  std::int64_t last_sample_step = -1;

  prometheus::Family<prometheus::Counter>& steps =
      BuildCounter().Name("mpx_train_steps_total").Help("Training steps run").Register(*registry);
  prometheus::Family<prometheus::Counter>& skipped =
      BuildCounter().Name("mpx_train_skipped_steps_total").Help("Steps skipped (non-finite gradients)").Register(*registry);
  prometheus::Family<prometheus::Counter>& nonfinite_steps =
      BuildCounter().Name("mpx_train_nonfinite_steps_total").Help("Steps whose loss or gradients went non-finite").Register(*registry);
  prometheus::Family<prometheus::Counter>& images =
      BuildCounter().Name("mpx_train_images_total").Help("Training images processed").Register(*registry);
  prometheus::Family<prometheus::Counter>& seconds =
      BuildCounter().Name("mpx_train_seconds_total").Help("Time spent in training steps").Register(*registry);
  prometheus::Family<prometheus::Gauge>& step_seconds =
      BuildGauge().Name("mpx_train_step_duration_seconds").Help("Duration of the last training step").Register(*registry);
  prometheus::Family<prometheus::Gauge>& loss =
      BuildGauge().Name("mpx_train_loss").Help("Training loss of the last step").Register(*registry);
  prometheus::Family<prometheus::Gauge>& lr =
      BuildGauge().Name("mpx_train_learning_rate").Help("Learning rate of the last step").Register(*registry);
  prometheus::Family<prometheus::Gauge>& scale =
      BuildGauge().Name("mpx_loss_scale").Help("Current loss scale (1 without loss scaling)").Register(*registry);
  prometheus::Family<prometheus::Counter>& scale_events =
      BuildCounter().Name("mpx_loss_scale_events_total").Help("Loss-scale growths and backoffs").Register(*registry);
  prometheus::Family<prometheus::Gauge>& epoch =
      BuildGauge().Name("mpx_train_epoch").Help("Last finished epoch").Register(*registry);
  prometheus::Family<prometheus::Gauge>& accuracy =
      BuildGauge().Name("mpx_test_accuracy_ratio").Help("Test accuracy after the last epoch (0-1)").Register(*registry);
  prometheus::Family<prometheus::Gauge>& epoch_loss =
      BuildGauge().Name("mpx_train_epoch_loss").Help("Mean training loss of the last epoch").Register(*registry);
  prometheus::Family<prometheus::Gauge>& memory =
      BuildGauge().Name("mpx_memory_peak_bytes").Help("Peak bytes by category").Register(*registry);
  prometheus::Family<prometheus::Counter>& nonfinite_values =
      BuildCounter().Name("mpx_tensor_nonfinite_values_total").Help("NaN and infinite values seen in sampled tensors").Register(*registry);
  prometheus::Family<prometheus::Gauge>& max_abs =
      BuildGauge().Name("mpx_tensor_max_abs").Help("Largest finite magnitude in the last sample, per layer and kind").Register(*registry);
  prometheus::Family<prometheus::Gauge>& beyond_fp16 =
      BuildGauge().Name("mpx_tensor_beyond_fp16_values").Help("Finite values beyond 65504 in the last sample").Register(*registry);
  prometheus::Family<prometheus::Gauge>& headroom =
      BuildGauge().Name("mpx_fp16_headroom_binades").Help("Binades between the largest value and FP16's maximum").Register(*registry);
  prometheus::Family<prometheus::Gauge>& underflow =
      BuildGauge().Name("mpx_fp16_gradient_underflow_ratio").Help("Fraction of gradient values below FP16's smallest normal").Register(*registry);
  // Magnitudes of sampled activations and gradients, buckets at every second power of two (2^-40 .. 2^16;
  // a value equal to a boundary lands in the bucket above it); NaNs are not observed.
  prometheus::Family<prometheus::Histogram>& magnitude =
      prometheus::BuildHistogram().Name("mpx_tensor_magnitude").Help("|x| of sampled activations and gradients").Register(*registry);
  // Data parallel: the gradient all-reduce (M9 is the relative error against an FP32 all-reduce).
  prometheus::Family<prometheus::Counter>& allreduce_bytes =
      BuildCounter().Name("mpx_allreduce_bytes_total").Help("Gradient bytes this rank sent in all-reduces, by --grad-comm mode").Register(*registry);
  prometheus::Family<prometheus::Counter>& allreduce_seconds =
      BuildCounter().Name("mpx_allreduce_seconds_total").Help("Time in gradient all-reduces (overlapped with backward)").Register(*registry);
  prometheus::Family<prometheus::Counter>& allreduce_wait =
      BuildCounter().Name("mpx_allreduce_wait_seconds_total").Help("Time backward waited for all-reduces (not hidden)").Register(*registry);
  prometheus::Family<prometheus::Gauge>& allreduce_error =
      BuildGauge().Name("mpx_allreduce_relative_error").Help("||AR16 - AR32|| / ||AR32|| of one bucket at the last numerics sample").Register(*registry);
  prometheus::Family<prometheus::Gauge>& residual_norm =
      BuildGauge().Name("mpx_allreduce_residual_norm").Help("L2 norm of the error-feedback residual").Register(*registry);
  prometheus::Family<prometheus::Gauge>& sample_step =
      BuildGauge().Name("mpx_numerics_sample_step").Help("Step of the last numerics sample").Register(*registry);
};

PrometheusExporter::PrometheusExporter(const std::string& bind_address, int port) : impl_(std::make_unique<Impl>()) {
  if (port < 0 || port > 65535) throw InvalidArgument("--metrics-port must be in 0..65535, got " + std::to_string(port));
  impl_->scale.Add({}).Set(1);
  if (port == 0) return;
  const std::string address = bind_address + ":" + std::to_string(port);
  try {
    // A scrape must get through however many clients hold connections open without sending (slowloris):
    // enough workers that idle connections do not queue a scrape for long, each dropped after a second
    // without a complete request (a scrape's request is one short line), and a deep accept queue.
    impl_->exposer = std::make_unique<prometheus::Exposer>(std::vector<std::string>{
        "listening_ports", address, "num_threads", "64", "request_timeout_ms", "1000", "listen_backlog", "1024",
        "connection_queue", "1024", "keep_alive_timeout_ms", "1000"});
  } catch (const std::exception& e) {
    throw IoError("cannot serve metrics on " + address + " (port in use or not permitted; pick another --metrics-port): " +
                  e.what());
  }
  impl_->exposer->RegisterCollectable(impl_->registry);
  impl_->url = "http://" + address + "/metrics";
}

PrometheusExporter::~PrometheusExporter() = default;

std::string PrometheusExporter::url() const { return impl_->url; }

void PrometheusExporter::record_step(std::int64_t, double loss, double lr, double loss_scale, bool skipped,
                                     std::int64_t images, double step_seconds) {
  Impl& m = *impl_;
  m.steps.Add({}).Increment();
  if (skipped) m.skipped.Add({}).Increment();
  m.images.Add({}).Increment(static_cast<double>(images));
  m.seconds.Add({}).Increment(std::max(0.0, step_seconds));
  m.step_seconds.Add({}).Set(step_seconds);
  m.loss.Add({}).Set(loss);
  m.lr.Add({}).Set(lr);
  if (m.last_scale != 0 && loss_scale != m.last_scale) {
    m.scale_events.Add({{"event", loss_scale > m.last_scale ? "growth" : "backoff"}}).Increment();
  }
  m.last_scale = loss_scale;
  m.scale.Add({}).Set(loss_scale);
}

void PrometheusExporter::record_allreduce(const std::string& mode, double bytes, double seconds, double wait_seconds,
                                          std::optional<double> relative_error, std::optional<double> residual_norm) {
  Impl& m = *impl_;
  m.allreduce_bytes.Add({{"mode", mode}}).Increment(bytes);
  m.allreduce_seconds.Add({{"mode", mode}}).Increment(seconds);
  m.allreduce_wait.Add({{"mode", mode}}).Increment(wait_seconds);
  if (residual_norm) m.residual_norm.Add({{"mode", mode}}).Set(*residual_norm);
  if (relative_error) m.allreduce_error.Add({{"mode", mode}}).Set(*relative_error);
}

void PrometheusExporter::record_epoch(int epoch, double train_loss, double test_accuracy) {
  impl_->epoch.Add({}).Set(epoch);
  impl_->epoch_loss.Add({}).Set(train_loss);
  impl_->accuracy.Add({}).Set(test_accuracy);
}

void PrometheusExporter::record_sample(const NumericsSample& sample) {
  Impl& m = *impl_;
  m.sample_step.Add({}).Set(static_cast<double>(sample.step));
  m.last_sample_step = sample.step;
  std::map<std::pair<std::string, std::string>, std::pair<double, double>> per_kind;  // -> (max_abs, beyond)
  for (const TensorRecord& r : sample.tensors) {
    const std::string kind = kind_name(r.kind);
    auto& [peak, beyond] = per_kind[{r.layer, kind}];
    peak = std::max(peak, r.stats.max_abs);
    beyond += static_cast<double>(r.stats.beyond_fp16);
    if (r.stats.nan) m.nonfinite_values.Add({{"layer", r.layer}, {"kind", kind}, {"value", "nan"}}).Increment(static_cast<double>(r.stats.nan));
    if (const auto inf = r.stats.pos_inf + r.stats.neg_inf) {
      m.nonfinite_values.Add({{"layer", r.layer}, {"kind", kind}, {"value", "inf"}}).Increment(static_cast<double>(inf));
    }
  }
  prometheus::Histogram::BucketBoundaries bounds;
  for (int k = -40; k <= 16; k += 2) bounds.push_back(std::ldexp(1.0, k));
  for (const TensorRecord& r : sample.tensors) {
    if (r.kind != TensorKind::activation && r.kind != TensorKind::activation_grad) continue;
    std::vector<double> increments(bounds.size() + 1, 0.0);
    double sum = 0;
    for (int b = 0; b < TensorStats::kBuckets; ++b) {
      const auto n = static_cast<double>(r.stats.histogram[static_cast<std::size_t>(b)]);
      if (n == 0) continue;
      const int binade = TensorStats::kMinBinade + b - 1;
      // The first boundary above [2^binade, 2^(binade+1)): index of the smallest even k > binade.
      const int k = binade + 1 + ((binade + 1) % 2 != 0 ? 1 : 0);
      const auto index = static_cast<std::size_t>(std::clamp((k + 40) / 2, 0, static_cast<int>(bounds.size())));
      increments[index] += n;
      if (b > 0 && b + 1 < TensorStats::kBuckets) sum += n * 1.5 * std::ldexp(1.0, binade);
    }
    m.magnitude.Add({{"layer", r.layer}, {"kind", kind_name(r.kind)}}, bounds).ObserveMultiple(increments, sum);
  }
  for (const auto& [key, value] : per_kind) {
    m.max_abs.Add({{"layer", key.first}, {"kind", key.second}}).Set(value.first);
    m.beyond_fp16.Add({{"layer", key.first}, {"kind", key.second}}).Set(value.second);
  }
  for (const LayerHeadroom& h : layer_headroom(sample)) {
    m.headroom.Add({{"layer", h.layer}, {"tensor", "activation"}}).Set(h.activation_headroom);
    m.headroom.Add({{"layer", h.layer}, {"tensor", "gradient"}}).Set(h.gradient_headroom);
    m.underflow.Add({{"layer", h.layer}, {"loss_scale", "applied"}}).Set(h.underflow_scaled);
    m.underflow.Add({{"layer", h.layer}, {"loss_scale", "none"}}).Set(h.underflow_unscaled);
  }
}

void PrometheusExporter::record_nonfinite(const NonFiniteOrigin& origin) {
  impl_->nonfinite_steps.Add({}).Increment();
  if (origin.step == impl_->last_sample_step) return;  // that step's sample counted its values already
  const std::string kind = origin.pass == "forward" ? "activation" : "activation_grad";
  if (origin.output.nan) {
    impl_->nonfinite_values.Add({{"layer", origin.layer}, {"kind", kind}, {"value", "nan"}})
        .Increment(static_cast<double>(origin.output.nan));
  }
  if (const auto inf = origin.output.pos_inf + origin.output.neg_inf) {
    impl_->nonfinite_values.Add({{"layer", origin.layer}, {"kind", kind}, {"value", "inf"}}).Increment(static_cast<double>(inf));
  }
}

void PrometheusExporter::record_memory_peak(const std::string& category, double bytes) {
  impl_->memory.Add({{"category", category}}).Set(bytes);
}

std::string PrometheusExporter::text() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, impl_->registry->Collect());
  return out.str();
}

}  // namespace mpx::telemetry
