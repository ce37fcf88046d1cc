// Dynamic batching: requests queue up and one worker thread runs them together, up to `max_batch` images
// of one variant per forward pass, waiting at most `max_queue_delay_us` after the oldest queued request for
// more to come (0: run whatever is queued as soon as the worker is free, as Triton's default). One worker
// for every variant, because a CPU forward pass already uses every core: two workers' OpenMP teams would
// only take turns (and spin against each other). A request still queued at its deadline is answered as
// timed out without running.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "mpx/serve/variant.h"

namespace mpx::serve {

using Clock = std::chrono::steady_clock;

struct BatchPolicy {
  std::int64_t max_batch = 64;
  std::int64_t max_queue_delay_us = 0;
  int threads = 0;  // OpenMP threads of the forward passes; 0: every core
  // Batches of at most this many images run on one thread: a small forward gains little from a second
  // core, and on a loaded machine (the HTTP threads, a load generator) the team's barrier waits for
  // whichever thread was descheduled, which is what makes the latency tail. 0: every batch uses `threads`.
  std::int64_t one_thread_batch = 2;
};

struct BatchOutcome {
  enum class Status : std::uint8_t { ok, timed_out, failed } status = Status::ok;
  std::vector<float> logits;  // rows x classes
  double queue_seconds = 0, compute_seconds = 0;
  std::int64_t batch_images = 0;  // images in the batch this request ran in
  std::string error;              // for failed
};

class DynamicBatcher {
 public:
  // Called by the worker after each batch ran (metrics): the variant, the images in it, its compute seconds.
  using BatchObserver = std::function<void(const ModelVariant&, std::int64_t images, double seconds)>;
  explicit DynamicBatcher(BatchPolicy policy, BatchObserver observer = {});
  ~DynamicBatcher();  // finishes what is queued, then stops the worker
  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Runs `rows` images (rows x pixels_per_image intensities) on `variant` (planned for max_batch images
  // at least) and blocks until they ran or timed out in the queue at `deadline`. Thread-safe. The queue
  // holds the variant until the request is answered.
  BatchOutcome run(std::shared_ptr<ModelVariant> variant, std::vector<float> pixels, std::int64_t rows,
                   Clock::time_point deadline);

  const BatchPolicy& policy() const { return policy_; }

 private:
  struct Job;
  void work();
  void run_batch(ModelVariant& variant, std::vector<std::shared_ptr<Job>>& jobs);
  std::int64_t queued_images_of(const ModelVariant* variant) const;  // with mutex_ held

  BatchPolicy policy_;
  BatchObserver observer_;
  mutable std::mutex mutex_;
  std::condition_variable queued_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stopping_ = false;
  std::vector<float> batch_pixels_, batch_logits_;
  std::thread worker_;
};

}  // namespace mpx::serve
