// The FP32 shadow: a sample of the low-precision answers is re-run on an FP32 copy of the model on a
// thread of its own, at low priority, off the response path and in batches of what queued up within 20 ms
// (a full queue drops the sample, counted, rather than slow a response), and each image's two answers are
// compared: top-1 agreement, the largest |logit difference|, and agreement per class (the class the FP32
// reference predicts).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mpx/serve/shadow_queue.h"
#include "mpx/serve/variant.h"

namespace mpx::serve {

struct ShadowComparison {
  std::string variant;         // the low-precision variant that answered
  std::int64_t images = 0, agreed = 0;
  std::vector<int> reference_class;  // per image: the FP32 top-1
  std::vector<bool> agree;           // per image
  double max_abs_logit_delta = 0;    // over finite pairs
  std::int64_t candidate_nonfinite = 0;  // images whose low-precision logits were not all finite
};

// Top-1 of each row (the first index of the largest; a row holding NaN has no top-1: -1).
std::vector<int> top1(const float* logits, std::int64_t rows, std::int64_t classes);
// Compares `candidate` with `reference` (rows x classes each).
ShadowComparison compare_logits(const std::string& variant, const float* candidate, const float* reference,
                                std::int64_t rows, std::int64_t classes);

class ShadowComparer {
 public:
  using Observer = std::function<void(const ShadowComparison&)>;
  // `reference`: the FP32 variant the shadow owns. `capacity`: requests that may wait; more are dropped.
  ShadowComparer(std::unique_ptr<ModelVariant> reference, std::size_t capacity, Observer observer);
  // Destroyed, it compares what is queued, then stops.
  ShadowComparer(const ShadowComparer&) = delete;
  ShadowComparer& operator=(const ShadowComparer&) = delete;

  // Queues one answered request; false (and counted) when the queue is full.
  bool submit(const std::string& variant, std::vector<float> pixels, std::int64_t rows, std::vector<float> logits);
  std::uint64_t dropped() const { return queue_.dropped(); }
  // Blocks until everything submitted so far has been compared (tests, shutdown).
  void drain() { queue_.drain(); }

 private:
  struct Item {
    std::string variant;
    std::vector<float> pixels, logits;
    std::int64_t rows = 0;
  };
  void compare(std::vector<Item>& items);  // on the queue's thread
  static constexpr double kGatherSeconds = 0.02;

  std::unique_ptr<ModelVariant> reference_;
  Observer observer_;
  std::vector<float> batch_pixels_, batch_reference_;  // the queue thread's
  ShadowQueue<Item> queue_;                            // last: its thread stops before the rest goes
};

}  // namespace mpx::serve
