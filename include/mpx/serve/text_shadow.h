// The FP32 shadow of a served GPT: a sample of the low-precision generations is re-read by an FP32
// generator on a thread of its own at the lowest priority, off the response path. The FP32 model is fed the
// prompt and the tokens the variant generated (teacher forcing), and at every generated position the two
// models' most likely next tokens are compared (top-1 agreement, per class: the token FP32 predicts) and
// the variant's largest logits are set against FP32's logits for the same tokens (max |delta logit|).
// A full queue drops the sample, counted.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mpx/serve/shadow.h"
#include "mpx/serve/shadow_queue.h"
#include "mpx/serve/text_variant.h"

namespace mpx::serve {

// Compares one generation (`steps`, one per generated token) with FP32's logits after each generated
// position (`reference`, tokens x vocabulary).
ShadowComparison compare_generation(const std::string& variant, const std::vector<StepLogits>& steps,
                                    const std::vector<float>& reference, std::int64_t vocabulary);

class TextShadow {
 public:
  using Observer = std::function<void(const ShadowComparison&)>;
  TextShadow(std::unique_ptr<artifacts::Generator> reference, std::size_t capacity, Observer observer);
  // Destroyed, it compares what is queued, then stops.
  TextShadow(const TextShadow&) = delete;
  TextShadow& operator=(const TextShadow&) = delete;

  // Queues one answered generation; false (and counted) when the queue is full.
  bool submit(const std::string& variant, const TextGeneration& answered);
  std::uint64_t dropped() const { return queue_.dropped(); }
  void drain() { queue_.drain(); }  // blocks until everything submitted so far has been compared

 private:
  struct Item {
    std::string variant;
    std::vector<std::int32_t> prompt, tokens;
    std::vector<StepLogits> steps;
  };
  ShadowComparison compare(const Item& item);  // on the queue's thread

  std::unique_ptr<artifacts::Generator> reference_;
  Observer observer_;
  ShadowQueue<Item> queue_;  // last: its thread stops before the rest goes
};

}  // namespace mpx::serve
