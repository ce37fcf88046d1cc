// One precision variant of a served GPT model: `instances` generators (each a planned model with its own KV
// cache) loaded from the FP32 file, rounded to the variant's format, or from an `mpx convert` copy.
// Instance k is used only by generator worker k (GenerationWorkers), so no two generations share one.
// What each new token was drawn from is recorded (the
// most likely token and the few largest logits), so the FP32 shadow can compare without keeping whole
// vocabularies of logits.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mpx/artifacts/generate.h"

namespace mpx::serve {

// The largest logits of one sampling step, by token id (kept for the shadow's |delta logit|).
inline constexpr std::size_t kKeptLogits = 8;
struct StepLogits {
  std::int32_t top1 = -1;  // -1: the logits held a NaN or an infinity
  std::vector<std::pair<std::int32_t, float>> largest;  // up to kKeptLogits, largest first
};
// The most likely token and the largest logits of a finite vector; top1 -1 (and nothing kept) otherwise.
StepLogits summarise_logits(const std::vector<float>& logits);

// Takes each new token as it is drawn; false: stop generating (the client has gone).
using TokenSink = std::function<bool(std::int32_t)>;

struct TextGeneration {
  artifacts::Generation generation;
  std::vector<StepLogits> steps;  // one per new token (and one more for a step that went non-finite)
  bool nonfinite = false;         // stopped because a step's logits were not finite
  bool cancelled = false;         // stopped because the token sink refused a token (the client left)
  double queue_seconds = 0, compute_seconds = 0;
};

class TextVariant {
 public:
  // `preset`: 32-true, bf16-true or 16-true (a GPT runs in one precision: weights and products rounded,
  // FP32 accumulation and softmax). Throws IoError/InvalidArgument when the file holds no GPT.
  TextVariant(const std::string& model_file, const std::string& preset, const std::string& weights, int instances);
  const std::string& name() const { return name_; }
  const std::string& preset() const { return preset_; }
  const std::string& weights_file() const { return weights_; }
  const nn::GptConfig& config() const { return generators_.front()->config(); }
  bool byte_level() const { return generators_.front()->byte_level(); }

  // Generates on instance `instance` (0 to instances - 1; the caller holds it for the call). Stops at the
  // first step whose logits are not finite, or when `on_token` (each new token as it is drawn; optional)
  // returns false. Throws InvalidArgument for tokens outside the vocabulary.
  void generate(int instance, const std::vector<std::int32_t>& prompt, const artifacts::SamplingOptions& sampling,
                TextGeneration& out, const TokenSink& on_token = {});

  // Drill: from the `after`-th request on (0: the first), every step's logits from the `from_token`-th new
  // token on are read as NaN, so the non-finite path (FP32 fallback, SLO, rollback) runs as it would for a
  // broken variant. Negative: off.
  void inject_nonfinite_after(std::int64_t after, std::int64_t from_token = 0) {
    poison_from_token_ = from_token;
    poison_after_ = after;
  }

 private:
  std::string name_, preset_, weights_;
  std::vector<std::unique_ptr<artifacts::Generator>> generators_;
  std::atomic<std::int64_t> requests_{0}, poison_after_{-1}, poison_from_token_{0};
};

}  // namespace mpx::serve
