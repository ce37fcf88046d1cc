// The serving metrics on /metrics (Prometheus text, prometheus-cpp): latency histograms by variant (time
// queued and time computing separately, and the whole request), requests by variant and status, batch
// sizes, non-finite outputs and FP32 fallbacks, the shadow's agreement (overall and per class), the active
// precision, the canary share, SLO breaches and rollbacks; for a GPT, generated tokens and the time per
// output token. Per-class series are bounded: a variant's first kMaxClassLabels classes get their own
// label, later ones (a GPT's vocabulary) are counted under class="other".
// Names follow the training exporter's rules.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "mpx/serve/shadow.h"

namespace mpx::serve {

inline constexpr std::size_t kMaxClassLabels = 256;

class ServeMetrics {
 public:
  ServeMetrics();
  ~ServeMetrics();
  ServeMetrics(const ServeMetrics&) = delete;
  ServeMetrics& operator=(const ServeMetrics&) = delete;

  // status: ok, bad_request, not_found, too_large, timed_out, unavailable, error
  void record_request(const std::string& variant, const std::string& status, double request_seconds);
  void record_phases(const std::string& variant, double queue_seconds, double compute_seconds);
  void record_batch(const std::string& variant, std::int64_t images);
  // A GPT request: the tokens it generated and its server-side seconds (time per output token observed).
  void record_generation(const std::string& variant, std::int64_t tokens, double seconds);
  void record_nonfinite(const std::string& variant, std::int64_t images);
  void record_fallback(const std::string& from_variant);
  void record_shadow(const ShadowComparison& comparison);
  void record_shadow_dropped(std::uint64_t total);
  void set_routing(const std::string& primary, const std::string& canary, double canary_share);
  void record_window(const std::string& variant, double p99_seconds, bool breached);
  void record_breach(const std::string& objective);
  void record_rollback(const std::string& from, const std::string& to);

  std::string text() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpx::serve
