#include "mpx/serve/text_variant.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

#include "mpx/core/error.h"
#include "mpx/serve/variant.h"

namespace mpx::serve {

StepLogits summarise_logits(const std::vector<float>& logits) {
  StepLogits s;
  for (const float v : logits) {
    if (!std::isfinite(v)) return s;
  }
  std::vector<std::int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  const std::size_t kept = std::min(kKeptLogits, order.size());
  // Ties go to the lower id, as the greedy sampler's max_element does.
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(kept), order.end(),
                    [&](std::int32_t a, std::int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  for (std::size_t i = 0; i < kept; ++i) s.largest.emplace_back(order[i], logits[static_cast<std::size_t>(order[i])]);
  if (kept > 0) s.top1 = order[0];
  return s;
}

namespace {
std::string generator_precision(const std::string& preset) {
  if (preset == "32-true") return "fp32";
  if (preset == "bf16-true") return "bf16";
  if (preset == "16-true") return "fp16";
  throw InvalidArgument("a GPT is served in fp32, bf16 or fp16 (32-true, bf16-true, 16-true), not " + preset);
}
}  // namespace

TextVariant::TextVariant(const std::string& model_file, const std::string& preset, const std::string& weights,
                         int instances)
    : name_(variant_name(preset)), preset_(preset), weights_(weights.empty() ? model_file : weights) {
  MPX_REQUIRE(instances >= 1, "a variant needs at least one instance");
  const std::string precision = generator_precision(preset);
  for (int k = 0; k < instances; ++k) generators_.push_back(std::make_unique<artifacts::Generator>(weights_, precision));
}

void TextVariant::generate(int instance, const std::vector<std::int32_t>& prompt,
                           const artifacts::SamplingOptions& sampling, TextGeneration& out, const TokenSink& on_token) {
  MPX_REQUIRE(instance >= 0 && instance < static_cast<int>(generators_.size()),
              "generator instance " + std::to_string(instance) + " is not loaded");
  const auto began = std::chrono::steady_clock::now();
  const std::int64_t poison_after = poison_after_.load();
  const bool poisoned = poison_after >= 0 && requests_.fetch_add(1) >= poison_after;
  const std::int64_t poison_from = poison_from_token_.load();
  out.steps.clear();
  out.nonfinite = false;
  out.cancelled = false;
  std::function<void(std::int32_t)> sink;
  if (on_token) sink = [&](std::int32_t t) { out.cancelled = out.cancelled || !on_token(t); };
  out.generation = generators_[static_cast<std::size_t>(instance)]->generate(
      prompt, sampling, sink, {}, [&](const std::vector<float>& logits) {
        if (out.cancelled) return false;
        const bool poison = poisoned && static_cast<std::int64_t>(out.steps.size()) >= poison_from;
        StepLogits s = poison ? StepLogits{} : summarise_logits(logits);
        const bool finite = s.top1 >= 0;
        out.steps.push_back(std::move(s));
        out.nonfinite = !finite;
        return finite;
      });
  out.compute_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
}

}  // namespace mpx::serve
