// The serving engine of a GPT model, independent of HTTP: generator variants per precision (FP32 always
// loaded), the same routing, canary, SLO windows and rollback as the image classifier's (Rollout), an FP32
// fallback for a generation whose logits went non-finite, and an FP32 shadow that re-reads sampled
// generations. SLO latency for text is the time per generated token (the request's compute and queue time
// divided by its new tokens), so long and short requests are judged alike. No batching across requests:
// each request holds one of `--instances` generator workers for its whole generation.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "mpx/serve/engine.h"
#include "mpx/serve/variant_registry.h"
#include "mpx/serve/generation_workers.h"
#include "mpx/serve/text_shadow.h"
#include "mpx/serve/text_variant.h"

namespace mpx::serve {

struct GenerateRequest {
  std::string id;
  std::vector<std::int32_t> prompt;
  artifacts::SamplingOptions sampling;
  std::vector<std::vector<std::int32_t>> stop;  // stop sequences (StopMatcher)
};

struct GenerateAnswer {
  Answer::Status status = Answer::Status::ok;
  std::string variant, fallback_from, error;
  artifacts::Generation generation;
  bool cancelled = false;  // the token sink stopped it (a stream whose client left)
  std::string finish_reason = "length";  // or "stop": a stop sequence ended it (and is not in the tokens)
};

class GenerationEngine {
 public:
  // options.model_or_run: a GPT model file or run directory. Throws IoError/InvalidArgument when it cannot
  // be served (the server then does not start).
  GenerationEngine(const ServeOptions& options, EventLog& events);
  ~GenerationEngine();
  GenerationEngine(const GenerationEngine&) = delete;
  GenerationEngine& operator=(const GenerationEngine&) = delete;

  // Thread-safe. With `on_token`, each new token of the answer is handed to it as it is drawn (from a
  // generator worker's thread; false stops the generation: the client has gone; tokens that may begin a
  // stop sequence wait until they cannot); when the variant's logits go non-finite after some tokens were
  // drawn for a stream, FP32 continues after them.
  GenerateAnswer generate(GenerateRequest request, const TokenSink& on_token = {});
  // Why the request cannot be generated (max_tokens, context, vocabulary), or empty: what generate() refuses
  // with bad_request, for a stream that must answer 400 before it starts.
  std::string refusal(const GenerateRequest& request) const;

  const std::string& model_file() const { return model_file_; }
  const nn::GptConfig& config() const { return config_; }
  bool byte_level() const { return byte_level_; }
  std::int64_t max_new_tokens() const { return options_.max_new_tokens; }
  std::vector<std::string> variant_names() const;

  nlohmann::json routing() const;  // with the loaded "variants"
  nlohmann::json admin(const nlohmann::json& command);
  WindowVerdict end_window() { return rollout_.end_window(); }
  void drain_shadow();

  Rollout& rollout() { return rollout_; }
  ServeMetrics& metrics() { return metrics_; }

 private:
  std::shared_ptr<TextVariant> variant_locked(const std::string& preset, const std::string& weights);
  std::shared_ptr<TextVariant> variant(const std::string& name) const;

  ServeOptions options_;
  std::string model_file_;
  nn::GptConfig config_;
  bool byte_level_ = false;
  int threads_ = 1;
  ServeMetrics metrics_;
  VariantRegistry<TextVariant> variants_;
  Rollout rollout_;
  std::unique_ptr<TextShadow> shadow_;
  std::atomic<std::int64_t> anonymous_requests_{0};
  std::unique_ptr<GenerationWorkers> workers_;  // last: stopped before the variants it runs go
};

// True when the model file (or run directory) holds a GPT rather than an image classifier.
bool holds_gpt(const std::string& model_or_run);

}  // namespace mpx::serve
