#include "mpx/serve/serve_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <map>
#include <mutex>
#include <set>
#include <sstream>

namespace mpx::serve {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

namespace {

// 50 us to about 3 s, doubling: batch-1 CNN requests take well under a millisecond on a 2-core machine.
Histogram::BucketBoundaries latency_buckets() {
  Histogram::BucketBoundaries b;
  for (double s = 50e-6; s < 4; s *= 2) b.push_back(s);
  return b;
}

Histogram::BucketBoundaries batch_buckets() {
  Histogram::BucketBoundaries b;
  for (double n = 1; n <= 4096; n *= 2) b.push_back(n);
  return b;
}

}  // namespace

struct ServeMetrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::mutex mutex;  // guards the shadow's running totals and the set of precisions seen
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> shadow_totals;  // variant -> (compared, agreed)
  std::map<std::pair<std::string, std::string>, std::pair<std::uint64_t, std::uint64_t>> class_totals;
  std::map<std::string, std::size_t> class_labels;  // variant -> labelled classes so far
  std::map<std::string, double> max_delta;
  std::set<std::string> precisions;

  prometheus::Family<Histogram>& request_seconds =
      BuildHistogram().Name("mpx_serve_request_duration_seconds").Help("Server-side time of an inference request, by variant").Register(*registry);
  prometheus::Family<Histogram>& queue_seconds =
      BuildHistogram().Name("mpx_serve_queue_duration_seconds").Help("Time a request waited for its batch, by variant").Register(*registry);
  prometheus::Family<Histogram>& compute_seconds =
      BuildHistogram().Name("mpx_serve_compute_duration_seconds").Help("Forward-pass time of the batch a request ran in, by variant").Register(*registry);
  prometheus::Family<Histogram>& batch_size =
      BuildHistogram().Name("mpx_serve_batch_size").Help("Images per forward pass, by variant").Register(*registry);
  prometheus::Family<prometheus::Counter>& requests =
      BuildCounter().Name("mpx_serve_requests_total").Help("Inference requests by variant and status").Register(*registry);
  prometheus::Family<prometheus::Counter>& nonfinite =
      BuildCounter().Name("mpx_serve_nonfinite_outputs_total").Help("Images whose logits were not all finite, by variant").Register(*registry);
  prometheus::Family<prometheus::Counter>& fallbacks =
      BuildCounter().Name("mpx_serve_fp32_fallbacks_total").Help("Requests answered by FP32 because the variant's outputs were not finite").Register(*registry);
  prometheus::Family<prometheus::Counter>& shadow_compared =
      BuildCounter().Name("mpx_serve_shadow_comparisons_total").Help("Outputs (images, or generated tokens) the FP32 shadow re-ran, by variant").Register(*registry);
  prometheus::Family<prometheus::Counter>& shadow_agreed =
      BuildCounter().Name("mpx_serve_shadow_agreements_total").Help("Outputs whose top-1 matched the FP32 shadow, by variant").Register(*registry);
  prometheus::Family<prometheus::Counter>& generated_tokens =
      BuildCounter().Name("mpx_serve_generated_tokens_total").Help("Tokens generated, by variant").Register(*registry);
  prometheus::Family<Histogram>& token_seconds =
      BuildHistogram().Name("mpx_serve_time_per_output_token_seconds").Help("Server-side seconds per generated token of a request, by variant").Register(*registry);
  prometheus::Family<prometheus::Gauge>& agreement =
      BuildGauge().Name("mpx_serve_shadow_agreement_ratio").Help("Top-1 agreement with the FP32 shadow since start, by variant").Register(*registry);
  prometheus::Family<prometheus::Gauge>& class_agreement =
      BuildGauge().Name("mpx_serve_shadow_class_agreement_ratio").Help("Top-1 agreement by the class FP32 predicts, by variant").Register(*registry);
  prometheus::Family<prometheus::Gauge>& delta =
      BuildGauge().Name("mpx_serve_shadow_max_abs_logit_delta").Help("Largest |logit - FP32 logit| since start, by variant").Register(*registry);
  prometheus::Family<prometheus::Counter>& shadow_dropped_family =
      BuildCounter().Name("mpx_serve_shadow_dropped_total").Help("Shadow samples dropped because the shadow was behind").Register(*registry);
  prometheus::Counter& shadow_dropped = shadow_dropped_family.Add({});
  prometheus::Family<prometheus::Gauge>& active =
      BuildGauge().Name("mpx_serve_active_precision").Help("1 for the variant serving the main traffic, 0 for the others").Register(*registry);
  prometheus::Family<prometheus::Gauge>& canary =
      BuildGauge().Name("mpx_serve_canary_share_ratio").Help("Share of requests routed to the canary variant").Register(*registry);
  prometheus::Family<prometheus::Gauge>& window_p99 =
      BuildGauge().Name("mpx_serve_window_p99_seconds").Help("P99 latency of the watched variant in the last SLO window").Register(*registry);
  prometheus::Family<prometheus::Counter>& windows =
      BuildCounter().Name("mpx_serve_slo_windows_total").Help("SLO windows judged, by variant and verdict").Register(*registry);
  prometheus::Family<prometheus::Counter>& breaches =
      BuildCounter().Name("mpx_serve_slo_breaches_total").Help("Windows that missed an objective, by objective").Register(*registry);
  prometheus::Family<prometheus::Counter>& rollbacks =
      BuildCounter().Name("mpx_serve_rollbacks_total").Help("Automatic and manual rollbacks to FP32").Register(*registry);
};

ServeMetrics::ServeMetrics() : impl_(std::make_unique<Impl>()) {}
ServeMetrics::~ServeMetrics() = default;

void ServeMetrics::record_request(const std::string& variant, const std::string& status, double request_seconds) {
  impl_->requests.Add({{"variant", variant}, {"status", status}}).Increment();
  if (status == "ok") impl_->request_seconds.Add({{"variant", variant}}, latency_buckets()).Observe(request_seconds);
}

void ServeMetrics::record_phases(const std::string& variant, double queue_seconds, double compute_seconds) {
  impl_->queue_seconds.Add({{"variant", variant}}, latency_buckets()).Observe(queue_seconds);
  impl_->compute_seconds.Add({{"variant", variant}}, latency_buckets()).Observe(compute_seconds);
}

void ServeMetrics::record_batch(const std::string& variant, std::int64_t images) {
  impl_->batch_size.Add({{"variant", variant}}, batch_buckets()).Observe(static_cast<double>(images));
}

void ServeMetrics::record_generation(const std::string& variant, std::int64_t tokens, double seconds) {
  impl_->generated_tokens.Add({{"variant", variant}}).Increment(static_cast<double>(tokens));
  if (tokens > 0) {
    impl_->token_seconds.Add({{"variant", variant}}, latency_buckets()).Observe(seconds / static_cast<double>(tokens));
  }
}

void ServeMetrics::record_nonfinite(const std::string& variant, std::int64_t images) {
  impl_->nonfinite.Add({{"variant", variant}}).Increment(static_cast<double>(images));
}

void ServeMetrics::record_fallback(const std::string& from_variant) {
  impl_->fallbacks.Add({{"variant", from_variant}}).Increment();
}

void ServeMetrics::record_shadow(const ShadowComparison& c) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  const prometheus::Labels labels{{"variant", c.variant}};
  impl_->shadow_compared.Add(labels).Increment(static_cast<double>(c.images));
  impl_->shadow_agreed.Add(labels).Increment(static_cast<double>(c.agreed));
  auto& [compared, agreed] = impl_->shadow_totals[c.variant];
  compared += static_cast<std::uint64_t>(c.images);
  agreed += static_cast<std::uint64_t>(c.agreed);
  impl_->agreement.Add(labels).Set(static_cast<double>(agreed) / static_cast<double>(compared));
  for (std::size_t i = 0; i < c.agree.size(); ++i) {
    const int cls = c.reference_class[i];
    std::string label = cls < 0 ? "none" : std::to_string(cls);
    if (!impl_->class_totals.count({c.variant, label})) {
      std::size_t& labelled = impl_->class_labels[c.variant];
      if (labelled < kMaxClassLabels) {
        ++labelled;
      } else {
        label = "other";
      }
    }
    auto& [n, a] = impl_->class_totals[{c.variant, label}];
    ++n;
    a += c.agree[i];
    impl_->class_agreement.Add({{"variant", c.variant}, {"class", label}}).Set(static_cast<double>(a) / static_cast<double>(n));
  }
  double& m = impl_->max_delta[c.variant];
  m = std::max(m, c.max_abs_logit_delta);
  impl_->delta.Add(labels).Set(m);
}

void ServeMetrics::record_shadow_dropped(std::uint64_t total) {
  const double now = impl_->shadow_dropped.Value();
  if (static_cast<double>(total) > now) impl_->shadow_dropped.Increment(static_cast<double>(total) - now);
}

void ServeMetrics::set_routing(const std::string& primary, const std::string& canary, double canary_share) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->precisions.insert(primary);
  if (!canary.empty()) impl_->precisions.insert(canary);
  for (const std::string& p : impl_->precisions) impl_->active.Add({{"precision", p}}).Set(p == primary ? 1 : 0);
  impl_->canary.Add({}).Set(canary.empty() ? 0 : canary_share);
}

void ServeMetrics::record_window(const std::string& variant, double p99_seconds, bool breached) {
  if (p99_seconds >= 0) impl_->window_p99.Add({{"variant", variant}}).Set(p99_seconds);
  impl_->windows.Add({{"variant", variant}, {"verdict", breached ? "breached" : "met"}}).Increment();
}

void ServeMetrics::record_breach(const std::string& objective) {
  impl_->breaches.Add({{"objective", objective}}).Increment();
}

void ServeMetrics::record_rollback(const std::string& from, const std::string& to) {
  impl_->rollbacks.Add({{"from", from}, {"to", to}}).Increment();
}

std::string ServeMetrics::text() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, impl_->registry->Collect());
  return out.str();
}

}  // namespace mpx::serve
