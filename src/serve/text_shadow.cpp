#include "mpx/serve/text_shadow.h"


#include <algorithm>
#include <cmath>

namespace mpx::serve {

ShadowComparison compare_generation(const std::string& variant, const std::vector<StepLogits>& steps,
                                    const std::vector<float>& reference, std::int64_t vocabulary) {
  const auto tokens = static_cast<std::int64_t>(reference.size()) / vocabulary;
  ShadowComparison c;
  c.variant = variant;
  c.images = std::min<std::int64_t>(tokens, static_cast<std::int64_t>(steps.size()));
  c.reference_class = top1(reference.data(), c.images, vocabulary);
  for (std::int64_t j = 0; j < c.images; ++j) {
    const StepLogits& s = steps[static_cast<std::size_t>(j)];
    const float* row = reference.data() + j * vocabulary;
    for (const auto& [id, value] : s.largest) {
      if (std::isfinite(row[id])) c.max_abs_logit_delta = std::max(c.max_abs_logit_delta, std::fabs(static_cast<double>(value) - row[id]));
    }
    const bool agree = s.top1 >= 0 && s.top1 == c.reference_class[static_cast<std::size_t>(j)];
    c.agree.push_back(agree);
    c.agreed += agree;
    c.candidate_nonfinite += s.top1 < 0;
  }
  return c;
}

TextShadow::TextShadow(std::unique_ptr<artifacts::Generator> reference, std::size_t capacity, Observer observer)
    : reference_(std::move(reference)),
      observer_(std::move(observer)),
      queue_(capacity, {}, [this](std::vector<Item>& items) {
        for (const Item& item : items) observer_(compare(item));
      }) {}

bool TextShadow::submit(const std::string& variant, const TextGeneration& answered) {
  if (answered.generation.tokens.empty()) return true;  // nothing generated, nothing to compare
  return queue_.submit({variant, answered.generation.prompt, answered.generation.tokens, answered.steps});
}

ShadowComparison TextShadow::compare(const Item& item) {
  // Position P-1 of the prompt predicts the first new token, the j-th new token the (j+1)-th: the FP32
  // model reads the prompt and all but the last new token, and the logits from position P-1 on are the
  // references.
  std::vector<std::int32_t> sequence = item.prompt;
  sequence.insert(sequence.end(), item.tokens.begin(), item.tokens.end() - 1);
  const std::int64_t vocabulary = reference_->config().vocab_size;
  std::vector<float> reference;
  std::size_t position = 0;
  reference_->generate(sequence, {0, 0.0f, 0, 0}, {}, [&](const std::vector<float>& logits) {
    if (position++ + 1 >= item.prompt.size()) reference.insert(reference.end(), logits.begin(), logits.end());
  });
  return compare_generation(item.variant, item.steps, reference, vocabulary);
}

}  // namespace mpx::serve
