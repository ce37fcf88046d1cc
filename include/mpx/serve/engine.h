// The serving engine, independent of HTTP: the variants and their batchers, the routing of requests
// (primary, and a canary share chosen deterministically by request id), the FP32 fallback for non-finite
// outputs, the FP32 shadow, SLO windows with automatic rollback to FP32, and the admin switches. Every
// request holds the variant it was routed to, so a switch never fails a request in flight.
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "mpx/serve/batcher.h"
#include "mpx/serve/rollout.h"
#include "mpx/serve/variant_registry.h"
#include "mpx/serve/serve_metrics.h"
#include "mpx/serve/shadow.h"
#include "mpx/serve/slo.h"
#include "mpx/serve/variant.h"

namespace mpx::serve {

struct ServeOptions {
  std::string model_or_run, model, data_dir = io::kFashionMnistDefaultDir;
  std::string precision = "fp32", weights;  // the primary variant; weights: a converted file (else from FP32)
  std::string canary_precision, canary_weights;
  double canary_share = 0.05;
  bool shadow = false;
  double shadow_share = 1.0;     // of the low-precision answers
  std::size_t shadow_queue = 256;  // requests waiting for the shadow; more are dropped (counted)
  SloSpec slo;
  double slo_window_seconds = 30;
  int rollback_after = 2;  // consecutive breached windows
  BatchPolicy batching;
  double request_timeout_seconds = 10;
  std::int64_t inject_nonfinite_canary_after = -1;  // drill: canary batches (GPT: requests) before its outputs go NaN
  std::int64_t inject_nonfinite_from_token = 0;     // drill (GPT): a poisoned request's logits go NaN from this new token
  std::int64_t max_new_tokens = 256;  // GPT: the most tokens one request may ask for
};

struct Answer {
  enum class Status : std::uint8_t { ok, bad_request, timed_out, unavailable, failed } status = Status::ok;
  std::string variant, fallback_from, error;
  std::vector<float> logits;  // rows x classes, FP32
  std::int64_t classes = 0;
};

class ServingEngine {
 public:
  ServingEngine(const ServeOptions& options, EventLog& events);
  ~ServingEngine();
  ServingEngine(const ServingEngine&) = delete;
  ServingEngine& operator=(const ServingEngine&) = delete;

  // rows x pixels_per_image() intensities in [0, 1]. Thread-safe.
  Answer infer(const std::string& request_id, std::vector<float> pixels, std::int64_t rows);

  const ModelSource& source() const { return source_; }
  std::int64_t pixels_per_image() const { return source_.height * source_.width; }
  std::int64_t classes() const { return classes_; }
  std::int64_t max_batch() const { return options_.batching.max_batch; }
  std::vector<std::string> variant_names() const;

  // The routing ({"primary", "canary", "canary_share", "state"}) with the loaded "variants".
  nlohmann::json routing() const;
  // An admin command (Rollout::admin); returns the new routing.
  nlohmann::json admin(const nlohmann::json& command);
  WindowVerdict end_window() { return rollout_.end_window(); }
  void drain_shadow();  // tests: every sampled answer compared

  // Routing, SLO windows, drain (graceful shutdown: new requests are answered `unavailable`).
  Rollout& rollout() { return rollout_; }
  ServeMetrics& metrics() { return metrics_; }

 private:
  std::shared_ptr<ModelVariant> variant_locked(const std::string& preset, const std::string& weights);
  std::shared_ptr<ModelVariant> variant(const std::string& name) const;

  ServeOptions options_;
  ModelSource source_;
  ServeMetrics metrics_;
  std::int64_t classes_ = 0;
  VariantRegistry<ModelVariant> variants_;
  std::unique_ptr<DynamicBatcher> batcher_;  // after metrics_: its worker reports to them
  Rollout rollout_;
  std::unique_ptr<ShadowComparer> shadow_;
  std::atomic<std::int64_t> anonymous_requests_{0};
};

}  // namespace mpx::serve
