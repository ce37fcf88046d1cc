// Dynamic batching: requests queue up and `instances` worker threads run them together, up to `max_batch`
// images of one variant per forward pass, waiting at most `max_queue_delay_us` after the oldest queued
// request for more to come (0: run whatever is queued as soon as a worker is free, as Triton's default).
// The workers serve every variant: worker k runs the variant's instance k. One worker with a team of
// `threads` per pass, or several with fewer threads each (Triton's instance groups): several single-thread
// workers never leave an OpenMP team spinning between passes. A request still queued at its deadline is
// answered as timed out without running.
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
  int threads = 0;  // OpenMP threads of each forward pass; 0: the cores divided among the instances
  int instances = 1;  // batching workers, each with its own instance of every variant
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
  void work(int instance);
  void run_batch(ModelVariant& variant, int instance, std::vector<std::shared_ptr<Job>>& jobs,
                 std::vector<float>& batch_pixels, std::vector<float>& batch_logits);
  std::int64_t queued_images_of(const ModelVariant* variant) const;  // with mutex_ held
  void wake_an_idle_worker();                                        // with mutex_ held

  BatchPolicy policy_;
  BatchObserver observer_;
  mutable std::mutex mutex_;
  // Worker k takes work only while workers 0..k-1 are busy, so that light traffic stays on instance 0
  // (its weights and activations warm in cache): each worker has its own wake-up.
  std::vector<std::unique_ptr<std::condition_variable>> wake_;
  std::vector<char> busy_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace mpx::serve
