// The serving engine, independent of HTTP: the variants and their batchers, the routing of requests
// (primary, and a canary share chosen deterministically by request id), the FP32 fallback for non-finite
// outputs, the FP32 shadow, SLO windows with automatic rollback to FP32, and the admin switches. Every
// request holds the variant it was routed to, so a switch never fails a request in flight.
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "mpx/serve/batcher.h"
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
  std::int64_t inject_nonfinite_canary_after = -1;  // drill: canary batches before its outputs go NaN
};

// Fraction in [0, 1) that a request id hashes to (FNV-1a, then a 64-bit finaliser); `salt` gives the
// shadow's sample an independent draw.
double request_fraction(const std::string& request_id, std::uint64_t salt = 0);

// JSON lines of what the server decided (rollbacks, switches, windows), to a stream, flushed per line.
class EventLog {
 public:
  explicit EventLog(std::FILE* out) : out_(out) {}
  void write(nlohmann::json event);
 private:
  std::mutex mutex_;
  std::FILE* out_;
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

  // {"primary", "canary", "canary_share", "state", "variants"}.
  nlohmann::json routing() const;
  // {"action": "rollback" | "promote" | "set" (with "precision") | "canary" (with "precision", "share")}.
  // Returns the new routing; throws InvalidArgument for a command it cannot carry out (nothing changes).
  nlohmann::json admin(const nlohmann::json& command);

  // Ends the current SLO window: judges it, rolls back after `rollback_after` breached windows in a row.
  // The monitor thread calls it every window; tests call it directly.
  WindowVerdict end_window();
  void start_slo_monitor();

  // Graceful shutdown: new requests are answered `unavailable`; wait_idle() returns when none is in flight.
  void begin_drain();
  bool draining() const { return draining_.load(); }
  bool wait_idle(double timeout_seconds);
  void drain_shadow();  // tests: every sampled answer compared

  ServeMetrics& metrics() { return metrics_; }

 private:
  struct Routing {
    std::string primary, canary, state = "serving";
    double canary_share = 0;
  };
  std::shared_ptr<ModelVariant> variant_locked(const std::string& preset, const std::string& weights);
  void set_routing_locked(Routing routing, const std::string& event, const std::string& reason);
  std::string watched_locked() const;
  void record_for_window(const std::string& variant, double seconds, std::int64_t nonfinite_images);
  void on_shadow(const ShadowComparison& comparison);
  void monitor();

  ServeOptions options_;
  ModelSource source_;
  EventLog& events_;
  ServeMetrics metrics_;
  std::int64_t classes_ = 0;
  mutable std::mutex mutex_;  // routing, variants, window
  std::map<std::string, std::shared_ptr<ModelVariant>> variants_;
  std::unique_ptr<DynamicBatcher> batcher_;  // after metrics_: its worker reports to them
  Routing routing_;
  WindowStats window_;
  std::string window_variant_;
  int breached_in_a_row_ = 0;
  std::unique_ptr<ShadowComparer> shadow_;
  std::atomic<bool> draining_{false};
  std::atomic<std::int64_t> in_flight_{0}, anonymous_requests_{0};
  std::mutex idle_mutex_;
  std::condition_variable idle_;
  bool stopping_ = false;
  std::condition_variable stop_monitor_;
  std::thread monitor_;
};

}  // namespace mpx::serve
