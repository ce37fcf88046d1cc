#include "mpx/serve/engine.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>

#include "mpx/core/error.h"

namespace mpx::serve {

ServingEngine::ServingEngine(const ServeOptions& options, EventLog& events)
    : options_(options),
      source_(resolve_model(options.model_or_run, options.model, options.data_dir)),
      rollout_({options.slo, options.slo_window_seconds, options.rollback_after}, metrics_, events,
               [this](const std::string& preset) {
                 std::lock_guard<std::mutex> lock(variants_.mutex());
                 return variant_locked(preset, "")->name();
               }) {
  MPX_REQUIRE(options_.shadow_share >= 0 && options_.shadow_share <= 1, "--shadow-share is a fraction between 0 and 1");
  MPX_REQUIRE(options_.request_timeout_seconds > 0, "--request-timeout-ms must be positive");
  const std::string primary = serving_preset(options_.precision, "--precision");
  batcher_ = std::make_unique<DynamicBatcher>(options_.batching, [this](const ModelVariant& v, std::int64_t images, double) {
    metrics_.record_batch(v.name(), images);
  });
  std::string primary_name, canary_name;
  {
    std::lock_guard<std::mutex> lock(variants_.mutex());
    // FP32 is always loaded: it answers when a variant's outputs are not finite, and rollbacks go to it.
    variant_locked("32-true", primary == "32-true" ? options_.weights : "");
    primary_name = variant_locked(primary, options_.weights)->name();
    if (!options_.canary_precision.empty()) {
      const std::string canary = serving_preset(options_.canary_precision, "--canary-precision");
      MPX_REQUIRE(canary != primary, "--canary-precision " + options_.canary_precision + " is the primary precision already");
      std::shared_ptr<ModelVariant> v = variant_locked(canary, options_.canary_weights);
      v->inject_nonfinite_after(options_.inject_nonfinite_canary_after);
      canary_name = v->name();
    } else {
      MPX_REQUIRE(options_.canary_weights.empty(), "--canary-weights needs --canary-precision");
      MPX_REQUIRE(options_.inject_nonfinite_canary_after < 0, "--inject-nonfinite-canary needs --canary-precision");
    }
    classes_ = variants_.locked().begin()->second->classes();
  }
  if (options_.shadow) {
    shadow_ = std::make_unique<ShadowComparer>(
        std::make_unique<ModelVariant>(source_, "32-true", options_.batching.max_batch), options_.shadow_queue,
        [this](const ShadowComparison& c) {
          metrics_.record_shadow(c);
          rollout_.record_agreement(c.variant, c.images, c.agreed);
        });
  }
  rollout_.start(primary_name, canary_name, options_.canary_share);
}

ServingEngine::~ServingEngine() { shadow_.reset(); }

std::shared_ptr<ModelVariant> ServingEngine::variant_locked(const std::string& preset, const std::string& weights) {
  const std::string name = variant_name(preset);
  if (auto it = variants_.locked().find(name); it != variants_.locked().end()) {
    const std::string wanted = weights.empty() ? source_.model_file : weights;
    MPX_REQUIRE(it->second->weights_file() == wanted,
                "the " + name + " variant is loaded from " + it->second->weights_file() + " already, not " + wanted);
    return it->second;
  }
  auto variant = std::make_shared<ModelVariant>(source_, preset, options_.batching.max_batch, weights,
                                                options_.batching.instances);
  variants_.locked()[name] = variant;
  return variant;
}

std::shared_ptr<ModelVariant> ServingEngine::variant(const std::string& name) const {
  return variants_.at(name);
}

std::vector<std::string> ServingEngine::variant_names() const {
  return variants_.names();
}

nlohmann::json ServingEngine::routing() const {
  nlohmann::json r = rollout_.routing();
  r["variants"] = variants_.describe();
  return r;
}

nlohmann::json ServingEngine::admin(const nlohmann::json& command) {
  rollout_.admin(command);
  return routing();
}

Answer ServingEngine::infer(const std::string& request_id, std::vector<float> pixels, std::int64_t rows) {
  const Clock::time_point start = Clock::now();
  Answer a;
  a.classes = classes_;
  if (!rollout_.admit()) {
    a.status = Answer::Status::unavailable;
    a.error = "the server is shutting down";
    return a;
  }
  struct Leave {
    Rollout& r;
    ~Leave() { r.leave(); }
  } leave{rollout_};
  if (rows < 1 || rows > options_.batching.max_batch) {
    a.status = Answer::Status::bad_request;
    a.error = fmt::format("a request of {} images: send 1 to {} (--max-batch)", rows, options_.batching.max_batch);
    return a;
  }
  const std::string id = request_id.empty() ? "mpx-" + std::to_string(anonymous_requests_.fetch_add(1)) : request_id;
  const std::shared_ptr<ModelVariant> variant = this->variant(rollout_.route(id).variant);
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
      rollout_.record_nonfinite(a.variant, nonfinite);
      a.fallback_from = a.variant;
      a.variant = "fp32";
      o = batcher_->run(this->variant("fp32"), std::move(kept), rows, deadline);
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
  if (a.fallback_from.empty()) rollout_.record_answer(a.variant, seconds);
  return a;
}

void ServingEngine::drain_shadow() {
  if (shadow_) shadow_->drain();
}

}  // namespace mpx::serve
