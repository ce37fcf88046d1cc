#include "mpx/serve/generation_engine.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "mpx/core/error.h"
#include "mpx/serve/stop_sequences.h"
#include "mpx/io/safetensors.h"
#include "mpx/train/run/model_file.h"

namespace mpx::serve {

bool holds_gpt(const std::string& model_or_run) {
  const std::string path = train::model_file_in(model_or_run);
  if (!std::filesystem::exists(path)) return false;  // resolve_model says what is missing
  const io::SafetensorsFile file = io::SafetensorsFile::read(path);
  return train::gpt_config_of(file, path).has_value();
}

GenerationEngine::GenerationEngine(const ServeOptions& options, EventLog& events)
    : options_(options),
      model_file_(train::model_file_in(options.model_or_run)),
      rollout_({options.slo, options.slo_window_seconds, options.rollback_after}, metrics_, events,
               [this](const std::string& preset) {
                 std::lock_guard<std::mutex> lock(variants_.mutex());
                 return variant_locked(preset, "")->name();
               }) {
  MPX_REQUIRE(options_.shadow_share >= 0 && options_.shadow_share <= 1, "--shadow-share is a fraction between 0 and 1");
  MPX_REQUIRE(options_.request_timeout_seconds > 0, "--request-timeout-ms must be positive");
  MPX_REQUIRE(options_.max_new_tokens >= 1, "--max-tokens must be 1 or more");
  const int instances = options_.batching.instances;
  threads_ = options_.batching.threads > 0 ? options_.batching.threads : std::max(1, omp_get_max_threads() / instances);
  workers_ = std::make_unique<GenerationWorkers>(instances, threads_);
  const std::string primary = serving_preset(options_.precision, "--precision");
  std::string primary_name, canary_name;
  {
    std::lock_guard<std::mutex> lock(variants_.mutex());
    const std::shared_ptr<TextVariant> fp32 = variant_locked("32-true", primary == "32-true" ? options_.weights : "");
    config_ = fp32->config();
    byte_level_ = fp32->byte_level();
    primary_name = variant_locked(primary, options_.weights)->name();
    if (!options_.canary_precision.empty()) {
      const std::string canary = serving_preset(options_.canary_precision, "--canary-precision");
      MPX_REQUIRE(canary != primary, "--canary-precision " + options_.canary_precision + " is the primary precision already");
      std::shared_ptr<TextVariant> v = variant_locked(canary, options_.canary_weights);
      v->inject_nonfinite_after(options_.inject_nonfinite_canary_after, options_.inject_nonfinite_from_token);
      canary_name = v->name();
    } else {
      MPX_REQUIRE(options_.canary_weights.empty(), "--canary-weights needs --canary-precision");
      MPX_REQUIRE(options_.inject_nonfinite_canary_after < 0, "--inject-nonfinite-canary needs --canary-precision");
    }
  }
  if (options_.shadow) {
    shadow_ = std::make_unique<TextShadow>(std::make_unique<artifacts::Generator>(model_file_, "fp32"),
                                           options_.shadow_queue, [this](const ShadowComparison& c) {
                                             metrics_.record_shadow(c);
                                             rollout_.record_agreement(c.variant, c.images, c.agreed);
                                           });
  }
  rollout_.start(primary_name, canary_name, options_.canary_share);
}

GenerationEngine::~GenerationEngine() { shadow_.reset(); }

std::shared_ptr<TextVariant> GenerationEngine::variant_locked(const std::string& preset, const std::string& weights) {
  const std::string name = variant_name(preset);
  const std::string wanted = weights.empty() ? model_file_ : weights;
  if (auto it = variants_.locked().find(name); it != variants_.locked().end()) {
    MPX_REQUIRE(it->second->weights_file() == wanted,
                "the " + name + " variant is loaded from " + it->second->weights_file() + " already, not " + wanted);
    return it->second;
  }
  auto v = std::make_shared<TextVariant>(model_file_, preset, weights, options_.batching.instances);
  if (!variants_.locked().empty()) {
    const nn::GptConfig& a = variants_.locked().begin()->second->config();
    const nn::GptConfig& b = v->config();
    if (a.n_layer != b.n_layer || a.n_head != b.n_head || a.n_embd != b.n_embd || a.block_size != b.block_size ||
        a.vocab_size != b.vocab_size) {
      throw InvalidArgument(wanted + " holds a GPT of other sizes than " + model_file_ + ": a variant must be the same model");
    }
  }
  variants_.locked()[name] = v;
  return v;
}

std::shared_ptr<TextVariant> GenerationEngine::variant(const std::string& name) const {
  return variants_.at(name);
}

std::vector<std::string> GenerationEngine::variant_names() const {
  return variants_.names();
}

nlohmann::json GenerationEngine::routing() const {
  nlohmann::json r = rollout_.routing();
  r["variants"] = variants_.describe();
  return r;
}

nlohmann::json GenerationEngine::admin(const nlohmann::json& command) {
  rollout_.admin(command);
  return routing();
}

void GenerationEngine::drain_shadow() {
  if (shadow_) shadow_->drain();
}

std::string GenerationEngine::refusal(const GenerateRequest& request) const {
  const artifacts::SamplingOptions& s = request.sampling;
  const auto prompt_tokens = static_cast<std::int64_t>(std::max<std::size_t>(request.prompt.size(), 1));
  if (s.max_new_tokens < 1 || s.max_new_tokens > options_.max_new_tokens) {
    return fmt::format("max_tokens {}: ask for 1 to {} (--max-tokens)", s.max_new_tokens, options_.max_new_tokens);
  }
  if (prompt_tokens + s.max_new_tokens > config_.block_size) {
    return fmt::format("a prompt of {} tokens and max_tokens {} exceed the model's context of {}: shorten one",
                       prompt_tokens, s.max_new_tokens, config_.block_size);
  }
  for (const std::int32_t id : request.prompt) {
    if (id < 0 || id >= config_.vocab_size) return fmt::format("token {} is outside the model's vocabulary of {}", id, config_.vocab_size);
  }
  for (const std::vector<std::int32_t>& stop : request.stop) {
    for (const std::int32_t id : stop) {
      if (id < 0 || id >= config_.vocab_size) {
        return fmt::format("stop token {} is outside the model's vocabulary of {}", id, config_.vocab_size);
      }
    }
  }
  return "";
}

GenerateAnswer GenerationEngine::generate(GenerateRequest request, const TokenSink& on_token) {
  const Clock::time_point start = Clock::now();
  GenerateAnswer a;
  if (!rollout_.admit()) {
    a.status = Answer::Status::unavailable;
    a.error = "the server is shutting down";
    return a;
  }
  struct Leave {
    Rollout& r;
    ~Leave() { r.leave(); }
  } leave{rollout_};
  auto refuse = [&](std::string message) {
    a.status = Answer::Status::bad_request;
    a.error = std::move(message);
    return a;
  };
  if (std::string why = refusal(request); !why.empty()) return refuse(std::move(why));
  const artifacts::SamplingOptions& s = request.sampling;
  const std::string id = request.id.empty() ? "mpx-" + std::to_string(anonymous_requests_.fetch_add(1)) : request.id;
  std::shared_ptr<TextVariant> v = variant(rollout_.route(id).variant);
  a.variant = v->name();
  const Clock::time_point deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.request_timeout_seconds));
  TextGeneration g;
  // The generator sees every drawn token; the client only those the stop sequences let through.
  StopMatcher stops(request.stop);
  bool client_left = false;
  const TokenSink drawn = [&](std::int32_t token) {
    for (const std::int32_t t : stops.push(token)) {
      if (on_token && !client_left && !on_token(t)) client_left = true;
    }
    return !client_left && !stops.stopped();
  };
  auto run = [&](TextVariant& on, const std::vector<std::int32_t>& prompt, const artifacts::SamplingOptions& sampling) {
    if (workers_->run(deadline, [&](int instance) { on.generate(instance, prompt, sampling, g, drawn); }, g.queue_seconds)) {
      metrics_.record_phases(on.name(), g.queue_seconds, g.compute_seconds);
      return true;
    }
    a.status = Answer::Status::timed_out;
    a.error = fmt::format("the request waited {:.0f} ms for a free generator, past --request-timeout-ms", 1e3 * g.queue_seconds);
    return false;
  };
  try {
    if (!run(*v, request.prompt, s)) return a;
    if (g.nonfinite && a.variant != "fp32") {
      metrics_.record_nonfinite(a.variant, 1);
      metrics_.record_fallback(a.variant);
      rollout_.record_nonfinite(a.variant, 1);
      a.fallback_from = a.variant;
      a.variant = "fp32";
      // Tokens a stream has sent stay sent: FP32 continues after them. Otherwise FP32 answers whole.
      std::vector<std::int32_t> sent = on_token ? g.generation.tokens : std::vector<std::int32_t>{};
      if (!on_token) stops = StopMatcher(request.stop);  // FP32 answers from the start
      std::vector<std::int32_t> prompt = request.prompt;
      prompt.insert(prompt.end(), sent.begin(), sent.end());
      artifacts::SamplingOptions rest = s;
      rest.max_new_tokens -= static_cast<std::int64_t>(sent.size());
      if (!run(*variant("fp32"), prompt, rest)) return a;
      g.generation.prompt = request.prompt;
      sent.insert(sent.end(), g.generation.tokens.begin(), g.generation.tokens.end());
      g.generation.tokens = std::move(sent);
    }
  } catch (const InvalidArgument& e) {
    return refuse(e.what());
  }
  if (g.nonfinite) {  // FP32 itself: nothing finite to answer with
    metrics_.record_nonfinite(a.variant, 1);
    a.status = Answer::Status::failed;
    a.error = "the FP32 model produced non-finite logits for this prompt: its weights are damaged";
    return a;
  }
  const auto tokens = static_cast<std::int64_t>(g.generation.tokens.size());
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  metrics_.record_generation(a.variant, tokens, seconds);
  a.cancelled = client_left;
  if (stops.stopped()) {
    a.finish_reason = "stop";
  } else if (on_token && !client_left) {
    for (const std::int32_t t : stops.flush()) {
      if (!on_token(t)) break;
    }
  }
  if (a.fallback_from.empty() && !client_left) {
    rollout_.record_answer(a.variant, seconds / static_cast<double>(std::max<std::int64_t>(tokens, 1)));
    const bool sample = a.variant != "fp32" && shadow_ && request_fraction(id, 0x5eed) < options_.shadow_share;
    if (sample && !shadow_->submit(a.variant, g)) metrics_.record_shadow_dropped(shadow_->dropped());
  }
  a.generation = std::move(g.generation);
  if (stops.stopped()) a.generation.tokens.resize(a.generation.tokens.size() - stops.matched_length());
  return a;
}

}  // namespace mpx::serve
