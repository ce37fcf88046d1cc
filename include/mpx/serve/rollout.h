// Which variant answers, and when that changes: the primary variant and a canary share chosen
// deterministically by request id, SLO windows of the watched (low-precision) variant with automatic
// rollback to FP32, the admin switches, and graceful drain. Independent of what the model computes: the
// image classifier's engine and the text generator's engine each own one.
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "mpx/serve/serve_metrics.h"
#include "mpx/serve/slo.h"

namespace mpx::serve {

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

struct RolloutOptions {
  SloSpec slo;
  double slo_window_seconds = 30;
  int rollback_after = 2;  // consecutive breached windows
};

struct Route {
  std::string variant;  // the name of the variant that answers
  bool canary = false;
};

class Rollout {
 public:
  // Loads the variant of a training preset when it is not loaded yet and returns its name; throws when it
  // cannot (the admin command then changes nothing).
  using VariantLoader = std::function<std::string(const std::string& preset)>;
  Rollout(RolloutOptions options, ServeMetrics& metrics, EventLog& events, VariantLoader load);
  ~Rollout();
  Rollout(const Rollout&) = delete;
  Rollout& operator=(const Rollout&) = delete;

  // The starting routing (no event is logged): `canary` empty for none.
  void start(const std::string& primary, const std::string& canary, double canary_share);
  Route route(const std::string& request_id) const;

  // {"primary", "canary", "canary_share", "state"}.
  nlohmann::json routing() const;
  // {"action": "rollback" | "promote" | "set" (with "precision") | "canary" (with "precision", "share")}.
  // Throws InvalidArgument for a command it cannot carry out (nothing changes).
  void admin(const nlohmann::json& command);

  // What the SLO windows are judged on: an answered request of the watched variant, its outputs that were
  // not finite, and the shadow's comparisons. Other variants' reports are ignored.
  void record_answer(const std::string& variant, double seconds);
  void record_nonfinite(const std::string& variant, std::int64_t outputs);
  void record_agreement(const std::string& variant, std::int64_t compared, std::int64_t agreed);

  // Ends the current SLO window: judges it, rolls back after `rollback_after` breached windows in a row.
  // The monitor thread calls it every window; tests call it directly.
  WindowVerdict end_window();
  void start_slo_monitor();

  // Requests in flight, for graceful shutdown: admit() is false once draining; every admitted request
  // calls leave() once.
  bool admit();
  void leave();
  void begin_drain() { draining_.store(true); }
  bool draining() const { return draining_.load(); }
  bool wait_idle(double timeout_seconds);

 private:
  struct Routing {
    std::string primary, canary, state = "serving";
    double canary_share = 0;
  };
  void set_routing_locked(Routing routing, const std::string& event, const std::string& reason);
  std::string watched_locked() const;
  void monitor();

  RolloutOptions options_;
  ServeMetrics& metrics_;
  EventLog& events_;
  VariantLoader load_;
  mutable std::mutex mutex_;  // routing and the window
  Routing routing_;
  WindowStats window_;
  std::string window_variant_;
  int breached_in_a_row_ = 0;
  std::atomic<bool> draining_{false};
  std::atomic<std::int64_t> in_flight_{0};
  std::mutex idle_mutex_;
  std::condition_variable idle_;
  bool stopping_ = false;
  std::condition_variable stop_monitor_;
  std::thread monitor_;
};

}  // namespace mpx::serve
