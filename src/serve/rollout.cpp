#include "mpx/serve/rollout.h"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <chrono>

#include "mpx/core/error.h"
#include "mpx/serve/variant.h"

namespace mpx::serve {

double request_fraction(const std::string& request_id, std::uint64_t salt) {
  std::uint64_t h = 1469598103934665603ull ^ salt;
  for (const char c : request_id) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  // FNV-1a alone leaves short ids such as "req-17" clustered; the finaliser spreads them over [0, 1).
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

void EventLog::write(nlohmann::json event) {
  const auto now = std::chrono::system_clock::now();
  event["time"] = fmt::format("{:%FT%T}Z", std::chrono::floor<std::chrono::milliseconds>(now));
  const std::string line = event.dump();
  std::lock_guard<std::mutex> lock(mutex_);
  std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

Rollout::Rollout(RolloutOptions options, ServeMetrics& metrics, EventLog& events, VariantLoader load)
    : options_(std::move(options)), metrics_(metrics), events_(events), load_(std::move(load)) {
  MPX_REQUIRE(options_.rollback_after >= 1, "--rollback-after is a number of windows, 1 or more");
  MPX_REQUIRE(options_.slo_window_seconds > 0, "--slo-window must be positive");
}

Rollout::~Rollout() {
  {
    std::lock_guard<std::mutex> lock(idle_mutex_);
    stopping_ = true;
  }
  stop_monitor_.notify_all();
  if (monitor_.joinable()) monitor_.join();
}

void Rollout::start(const std::string& primary, const std::string& canary, double canary_share) {
  MPX_REQUIRE(canary_share >= 0 && canary_share <= 1, "--canary-share is a fraction between 0 and 1");
  std::lock_guard<std::mutex> lock(mutex_);
  Routing r{primary, canary, canary.empty() ? "serving" : "canary", canary.empty() ? 0 : canary_share};
  set_routing_locked(r, "", "");
}

Route Rollout::route(const std::string& request_id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const bool canary = !routing_.canary.empty() && request_fraction(request_id) < routing_.canary_share;
  return {canary ? routing_.canary : routing_.primary, canary};
}

std::string Rollout::watched_locked() const {
  if (!routing_.canary.empty()) return routing_.canary;
  return routing_.primary != "fp32" ? routing_.primary : "";
}

void Rollout::set_routing_locked(Routing routing, const std::string& event, const std::string& reason) {
  const Routing before = routing_;
  routing_ = std::move(routing);
  breached_in_a_row_ = 0;
  window_ = {};
  window_variant_ = watched_locked();
  metrics_.set_routing(routing_.primary, routing_.canary, routing_.canary_share);
  if (event.empty()) return;
  nlohmann::json e = {{"type", event}, {"reason", reason}, {"from", before.primary}, {"to", routing_.primary},
                      {"canary", routing_.canary.empty() ? nlohmann::json(nullptr) : nlohmann::json(routing_.canary)},
                      {"canary_share", routing_.canary_share}};
  if (!before.canary.empty()) e["previous_canary"] = before.canary;
  events_.write(e);
}

nlohmann::json Rollout::routing() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return {{"primary", routing_.primary},
          {"canary", routing_.canary.empty() ? nlohmann::json(nullptr) : nlohmann::json(routing_.canary)},
          {"canary_share", routing_.canary.empty() ? 0.0 : routing_.canary_share},
          {"state", routing_.state}};
}

void Rollout::admin(const nlohmann::json& command) {
  MPX_REQUIRE(command.is_object() && command.contains("action") && command["action"].is_string(),
              "the body must be a JSON object with \"action\": rollback, promote, set or canary");
  const std::string action = command["action"];
  auto text_field = [&](const char* key) {
    MPX_REQUIRE(command.contains(key) && command[key].is_string(), std::string("\"") + action + "\" needs \"" + key + "\"");
    return command[key].get<std::string>();
  };
  std::lock_guard<std::mutex> lock(mutex_);
  Routing r = routing_;
  if (action == "rollback") {
    r = {"fp32", "", "rolled_back", 0};
    metrics_.record_rollback(routing_.canary.empty() ? routing_.primary : routing_.canary, "fp32");
  } else if (action == "promote") {
    MPX_REQUIRE(!routing_.canary.empty(), "there is no canary to promote");
    r = {routing_.canary, "", "promoted", 0};
  } else if (action == "set") {
    r = {load_(serving_preset(text_field("precision"), "\"precision\"")), "", "serving", 0};
  } else if (action == "canary") {
    const std::string preset = serving_preset(text_field("precision"), "\"precision\"");
    MPX_REQUIRE(command.contains("share") && command["share"].is_number(), "\"canary\" needs a numeric \"share\"");
    const double share = command["share"];
    MPX_REQUIRE(share >= 0 && share <= 1, "\"share\" is a fraction between 0 and 1");
    const std::string name = load_(preset);
    MPX_REQUIRE(name != routing_.primary, "the canary must differ from the primary variant " + routing_.primary);
    r = {routing_.primary, name, "canary", share};
  } else {
    throw InvalidArgument("unknown action '" + action + "': rollback, promote, set or canary");
  }
  set_routing_locked(r, action, "manual (POST /admin/precision)");
}

void Rollout::record_answer(const std::string& variant, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (variant != window_variant_) return;
  ++window_.requests;
  window_.latencies_seconds.push_back(seconds);
}

void Rollout::record_nonfinite(const std::string& variant, std::int64_t outputs) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (variant == window_variant_) window_.nonfinite_outputs += outputs;
}

void Rollout::record_agreement(const std::string& variant, std::int64_t compared, std::int64_t agreed) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (variant != window_variant_) return;
  window_.compared += compared;
  window_.agreed += agreed;
}

WindowVerdict Rollout::end_window() {
  std::lock_guard<std::mutex> lock(mutex_);
  WindowStats stats = std::move(window_);
  window_ = {};
  const std::string variant = window_variant_;
  if (variant.empty()) return {};
  WindowVerdict v = judge_window(std::move(stats), options_.slo);
  metrics_.record_window(variant, v.p99_ms ? *v.p99_ms / 1e3 : -1, v.breached);
  for (const std::string& objective : v.breached_objectives) metrics_.record_breach(objective);
  breached_in_a_row_ = v.breached ? breached_in_a_row_ + 1 : 0;
  nlohmann::json e = {{"type", "slo_window"}, {"variant", variant}, {"breached", v.breached},
                      {"breached_in_a_row", breached_in_a_row_}, {"requests", v.requests},
                      {"nonfinite", v.nonfinite}, {"compared", v.compared}, {"reasons", v.reasons}};
  e["p99_ms"] = v.p99_ms ? nlohmann::json(*v.p99_ms) : nlohmann::json(nullptr);
  e["agreement"] = v.agreement ? nlohmann::json(*v.agreement) : nlohmann::json(nullptr);
  events_.write(e);
  if (breached_in_a_row_ >= options_.rollback_after) {
    std::string reason = fmt::format("{} windows in a row missed the SLO:", breached_in_a_row_);
    for (const std::string& r : v.reasons) reason += " " + r + ";";
    reason.pop_back();
    metrics_.record_rollback(variant, "fp32");
    set_routing_locked({"fp32", "", "rolled_back", 0}, "rollback", reason);
  }
  return v;
}

void Rollout::start_slo_monitor() {
  if (options_.slo.empty() || monitor_.joinable()) return;
  monitor_ = std::thread([this] { monitor(); });
}

void Rollout::monitor() {
  using Clock = std::chrono::steady_clock;
  const auto window = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.slo_window_seconds));
  Clock::time_point next = Clock::now() + window;
  std::unique_lock<std::mutex> lock(idle_mutex_);
  while (!stopping_) {
    if (stop_monitor_.wait_until(lock, next, [&] { return stopping_; })) return;
    lock.unlock();
    end_window();
    lock.lock();
    next += window;
  }
}

bool Rollout::admit() {
  in_flight_.fetch_add(1);
  if (!draining_.load()) return true;
  leave();
  return false;
}

void Rollout::leave() {
  if (in_flight_.fetch_sub(1) == 1) {
    std::lock_guard<std::mutex> lock(idle_mutex_);
    idle_.notify_all();
  }
}

bool Rollout::wait_idle(double timeout_seconds) {
  std::unique_lock<std::mutex> lock(idle_mutex_);
  return idle_.wait_for(lock, std::chrono::duration<double>(timeout_seconds), [&] { return in_flight_.load() == 0; });
}

}  // namespace mpx::serve
