#include "mpx/serve/engine.h"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>

#include "mpx/core/error.h"

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

ServingEngine::ServingEngine(const ServeOptions& options, EventLog& events)
    : options_(options),
      source_(resolve_model(options.model_or_run, options.model, options.data_dir)),
      events_(events) {
  MPX_REQUIRE(options_.canary_share >= 0 && options_.canary_share <= 1, "--canary-share is a fraction between 0 and 1");
  MPX_REQUIRE(options_.shadow_share >= 0 && options_.shadow_share <= 1, "--shadow-share is a fraction between 0 and 1");
  MPX_REQUIRE(options_.rollback_after >= 1, "--rollback-after is a number of windows, 1 or more");
  MPX_REQUIRE(options_.request_timeout_seconds > 0, "--request-timeout-ms must be positive");
  const std::string primary = serving_preset(options_.precision, "--precision");
  batcher_ = std::make_unique<DynamicBatcher>(options_.batching, [this](const ModelVariant& v, std::int64_t images, double) {
    metrics_.record_batch(v.name(), images);
  });
  std::lock_guard<std::mutex> lock(mutex_);
  // FP32 is always loaded: it answers when a variant's outputs are not finite, and rollbacks go to it.
  variant_locked("32-true", primary == "32-true" ? options_.weights : "");
  Routing r;
  r.primary = variant_locked(primary, options_.weights)->name();
  if (!options_.canary_precision.empty()) {
    const std::string canary = serving_preset(options_.canary_precision, "--canary-precision");
    MPX_REQUIRE(canary != primary, "--canary-precision " + options_.canary_precision + " is the primary precision already");
    std::shared_ptr<ModelVariant> v = variant_locked(canary, options_.canary_weights);
    v->inject_nonfinite_after(options_.inject_nonfinite_canary_after);
    r.canary = v->name();
    r.canary_share = options_.canary_share;
    r.state = "canary";
  } else {
    MPX_REQUIRE(options_.canary_weights.empty(), "--canary-weights needs --canary-precision");
    MPX_REQUIRE(options_.inject_nonfinite_canary_after < 0, "--inject-nonfinite-canary needs --canary-precision");
  }
  classes_ = variants_.begin()->second->classes();
  if (options_.shadow) {
    shadow_ = std::make_unique<ShadowComparer>(
        std::make_unique<ModelVariant>(source_, "32-true", options_.batching.max_batch), options_.shadow_queue,
        [this](const ShadowComparison& c) { on_shadow(c); });
  }
  set_routing_locked(r, "", "");
}

ServingEngine::~ServingEngine() {
  {
    std::lock_guard<std::mutex> lock(idle_mutex_);
    stopping_ = true;
  }
  stop_monitor_.notify_all();
  if (monitor_.joinable()) monitor_.join();
  shadow_.reset();
}

std::shared_ptr<ModelVariant> ServingEngine::variant_locked(const std::string& preset, const std::string& weights) {
  const std::string name = variant_name(preset);
  if (auto it = variants_.find(name); it != variants_.end()) {
    const std::string wanted = weights.empty() ? source_.model_file : weights;
    MPX_REQUIRE(it->second->weights_file() == wanted,
                "the " + name + " variant is loaded from " + it->second->weights_file() + " already, not " + wanted);
    return it->second;
  }
  auto variant = std::make_shared<ModelVariant>(source_, preset, options_.batching.max_batch, weights,
                                                options_.batching.instances);
  variants_[name] = variant;
  return variant;
}

std::vector<std::string> ServingEngine::variant_names() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> names;
  for (const auto& [name, variant] : variants_) names.push_back(name);
  return names;
}

std::string ServingEngine::watched_locked() const {
  if (!routing_.canary.empty()) return routing_.canary;
  return routing_.primary != "fp32" ? routing_.primary : "";
}

void ServingEngine::set_routing_locked(Routing routing, const std::string& event, const std::string& reason) {
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

nlohmann::json ServingEngine::routing() const {
  std::lock_guard<std::mutex> lock(mutex_);
  nlohmann::json variants = nlohmann::json::array();
  for (const auto& [name, v] : variants_) {
    variants.push_back({{"name", name}, {"preset", v->preset()}, {"weights", v->weights_file()}});
  }
  return {{"primary", routing_.primary},
          {"canary", routing_.canary.empty() ? nlohmann::json(nullptr) : nlohmann::json(routing_.canary)},
          {"canary_share", routing_.canary.empty() ? 0.0 : routing_.canary_share},
          {"state", routing_.state},
          {"variants", variants}};
}

nlohmann::json ServingEngine::admin(const nlohmann::json& command) {
  MPX_REQUIRE(command.is_object() && command.contains("action") && command["action"].is_string(),
              "the body must be a JSON object with \"action\": rollback, promote, set or canary");
  const std::string action = command["action"];
  auto text_field = [&](const char* key) {
    MPX_REQUIRE(command.contains(key) && command[key].is_string(), std::string("\"") + action + "\" needs \"" + key + "\"");
    return command[key].get<std::string>();
  };
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Routing r = routing_;
    if (action == "rollback") {
      r = {"fp32", "", "rolled_back", 0};
      metrics_.record_rollback(routing_.canary.empty() ? routing_.primary : routing_.canary, "fp32");
    } else if (action == "promote") {
      MPX_REQUIRE(!routing_.canary.empty(), "there is no canary to promote");
      r = {routing_.canary, "", "promoted", 0};
    } else if (action == "set") {
      const std::string preset = serving_preset(text_field("precision"), "\"precision\"");
      r = {variant_locked(preset, "")->name(), "", "serving", 0};
    } else if (action == "canary") {
      const std::string preset = serving_preset(text_field("precision"), "\"precision\"");
      MPX_REQUIRE(command.contains("share") && command["share"].is_number(), "\"canary\" needs a numeric \"share\"");
      const double share = command["share"];
      MPX_REQUIRE(share >= 0 && share <= 1, "\"share\" is a fraction between 0 and 1");
      const std::string name = variant_locked(preset, "")->name();
      MPX_REQUIRE(name != routing_.primary, "the canary must differ from the primary variant " + routing_.primary);
      r = {routing_.primary, name, "canary", share};
    } else {
      throw InvalidArgument("unknown action '" + action + "': rollback, promote, set or canary");
    }
    set_routing_locked(r, action, "manual (POST /admin/precision)");
  }
  return routing();
}

Answer ServingEngine::infer(const std::string& request_id, std::vector<float> pixels, std::int64_t rows) {
  const Clock::time_point start = Clock::now();
  Answer a;
  a.classes = classes_;
  in_flight_.fetch_add(1);
  struct Leave {
    ServingEngine* e;
    ~Leave() {
      if (e->in_flight_.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lock(e->idle_mutex_);
        e->idle_.notify_all();
      }
    }
  } leave{this};
  if (draining_.load()) {
    a.status = Answer::Status::unavailable;
    a.error = "the server is shutting down";
    return a;
  }
  if (rows < 1 || rows > options_.batching.max_batch) {
    a.status = Answer::Status::bad_request;
    a.error = fmt::format("a request of {} images: send 1 to {} (--max-batch)", rows, options_.batching.max_batch);
    return a;
  }
  const std::string id = request_id.empty() ? "mpx-" + std::to_string(anonymous_requests_.fetch_add(1)) : request_id;
  std::shared_ptr<ModelVariant> variant, fp32;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const bool canary = !routing_.canary.empty() && request_fraction(id) < routing_.canary_share;
    variant = variants_.at(canary ? routing_.canary : routing_.primary);
    fp32 = variants_.at("fp32");
  }
  a.variant = variant->name();
  const bool low_precision = a.variant != "fp32";
  const bool sample = low_precision && shadow_ && request_fraction(id, 0x5eed) < options_.shadow_share;
  std::vector<float> kept;
  if (low_precision) kept = pixels;  // the FP32 fallback or the shadow needs the inputs again
  const Clock::time_point deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.request_timeout_seconds));
  BatchOutcome o = batcher_->run(variant, std::move(pixels), rows, deadline);
  metrics_.record_phases(a.variant, o.queue_seconds, o.compute_seconds);
  if (o.status == BatchOutcome::Status::ok && low_precision) {
    std::int64_t nonfinite = 0;
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t k = 0; k < classes_; ++k) {
        if (!std::isfinite(o.logits[static_cast<std::size_t>(r * classes_ + k)])) {
          ++nonfinite;
          break;
        }
      }
    }
    if (nonfinite > 0) {
      metrics_.record_nonfinite(a.variant, nonfinite);
      metrics_.record_fallback(a.variant);
      record_for_window(a.variant, 0, nonfinite);
      a.fallback_from = a.variant;
      a.variant = "fp32";
      o = batcher_->run(fp32, std::move(kept), rows, deadline);
    } else if (sample && !shadow_->submit(a.variant, std::move(kept), rows, o.logits)) {
      metrics_.record_shadow_dropped(shadow_->dropped());
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  switch (o.status) {
    case BatchOutcome::Status::ok:
      a.logits = std::move(o.logits);
      break;
    case BatchOutcome::Status::timed_out:
      a.status = Answer::Status::timed_out;
      a.error = fmt::format("the request waited {:.0f} ms in the queue, past --request-timeout-ms", 1e3 * o.queue_seconds);
      return a;
    case BatchOutcome::Status::failed:
      a.status = Answer::Status::failed;
      a.error = o.error;
      return a;
  }
  for (const float v : a.logits) {
    if (!std::isfinite(v)) {  // FP32 itself: nothing finite to answer with
      metrics_.record_nonfinite(a.variant, rows);
      a.status = Answer::Status::failed;
      a.error = "the FP32 model produced non-finite logits for these inputs: its weights are damaged";
      return a;
    }
  }
  if (a.fallback_from.empty()) record_for_window(a.variant, seconds, 0);
  return a;
}

void ServingEngine::record_for_window(const std::string& variant, double seconds, std::int64_t nonfinite_images) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (variant != window_variant_) return;
  if (nonfinite_images > 0) {
    window_.nonfinite_outputs += nonfinite_images;
    return;
  }
  ++window_.requests;
  window_.latencies_seconds.push_back(seconds);
}

void ServingEngine::on_shadow(const ShadowComparison& c) {
  metrics_.record_shadow(c);
  std::lock_guard<std::mutex> lock(mutex_);
  if (c.variant != window_variant_) return;
  window_.compared += c.images;
  window_.agreed += c.agreed;
}

WindowVerdict ServingEngine::end_window() {
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

void ServingEngine::start_slo_monitor() {
  if (options_.slo.empty() || monitor_.joinable()) return;
  monitor_ = std::thread([this] { monitor(); });
}

void ServingEngine::monitor() {
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

void ServingEngine::begin_drain() { draining_.store(true); }

bool ServingEngine::wait_idle(double timeout_seconds) {
  std::unique_lock<std::mutex> lock(idle_mutex_);
  return idle_.wait_for(lock, std::chrono::duration<double>(timeout_seconds), [&] { return in_flight_.load() == 0; });
}

void ServingEngine::drain_shadow() {
  if (shadow_) shadow_->drain();
}

}  // namespace mpx::serve
