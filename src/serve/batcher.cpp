#include "mpx/serve/batcher.h"

#include <omp.h>

#include <algorithm>

#include "mpx/core/error.h"

namespace mpx::serve {

struct DynamicBatcher::Job {
  std::shared_ptr<ModelVariant> variant;
  std::vector<float> pixels;
  std::int64_t rows = 0;
  Clock::time_point arrived, deadline;
  BatchOutcome outcome;
  bool done = false;
  std::condition_variable finished;
};

DynamicBatcher::DynamicBatcher(BatchPolicy policy, BatchObserver observer)
    : policy_(policy), observer_(std::move(observer)) {
  MPX_REQUIRE(policy_.max_batch >= 1, "--max-batch must be 1 or more");
  MPX_REQUIRE(policy_.max_queue_delay_us >= 0, "--max-queue-delay-us must be 0 or more");
  MPX_REQUIRE(policy_.instances >= 1, "--instances must be 1 or more");
  busy_.assign(static_cast<std::size_t>(policy_.instances), 0);
  for (int k = 0; k < policy_.instances; ++k) wake_.push_back(std::make_unique<std::condition_variable>());
  for (int k = 0; k < policy_.instances; ++k) workers_.emplace_back([this, k] { work(k); });
}

DynamicBatcher::~DynamicBatcher() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  for (const auto& wake : wake_) wake->notify_all();
  for (std::thread& w : workers_) w.join();
}

void DynamicBatcher::wake_an_idle_worker() {
  for (std::size_t k = 0; k < busy_.size(); ++k) {
    if (!busy_[k]) {
      wake_[k]->notify_one();
      return;
    }
  }
}

std::int64_t DynamicBatcher::queued_images_of(const ModelVariant* variant) const {
  std::int64_t images = 0;
  for (const std::shared_ptr<Job>& job : queue_) images += job->variant.get() == variant ? job->rows : 0;
  return images;
}

BatchOutcome DynamicBatcher::run(std::shared_ptr<ModelVariant> variant, std::vector<float> pixels, std::int64_t rows,
                                 Clock::time_point deadline) {
  MPX_REQUIRE(rows >= 1 && rows <= policy_.max_batch, "a request of " + std::to_string(rows) +
                                                          " images is more than --max-batch " +
                                                          std::to_string(policy_.max_batch));
  MPX_REQUIRE(variant->max_batch() >= policy_.max_batch, "the variant is planned for fewer images than --max-batch");
  MPX_REQUIRE(variant->instances() >= policy_.instances, "the variant has fewer instances than the batcher has workers");
  auto job = std::make_shared<Job>();
  job->variant = std::move(variant);
  job->pixels = std::move(pixels);
  job->rows = rows;
  job->arrived = Clock::now();
  job->deadline = deadline;
  std::unique_lock<std::mutex> lock(mutex_);
  if (stopping_) {
    job->outcome.status = BatchOutcome::Status::failed;
    job->outcome.error = "the server is shutting down";
    return job->outcome;
  }
  queue_.push_back(job);
  wake_an_idle_worker();
  job->finished.wait(lock, [&] { return job->done; });
  return std::move(job->outcome);
}

void DynamicBatcher::work(int instance) {
  const int threads = policy_.threads > 0 ? policy_.threads : std::max(1, omp_get_max_threads() / policy_.instances);
  int current = threads;
  omp_set_num_threads(threads);  // OpenMP's thread count is per thread: this worker's own
  std::vector<std::shared_ptr<Job>> jobs;
  std::vector<float> pixels, logits;
  std::condition_variable& wake = *wake_[static_cast<std::size_t>(instance)];
  auto lower_workers_busy = [&] {
    return std::all_of(busy_.begin(), busy_.begin() + instance, [](char b) { return b != 0; });
  };
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake.wait(lock, [&] { return stopping_ || (!queue_.empty() && lower_workers_busy()); });
    if (queue_.empty()) return;  // stopping, nothing left
    // The oldest request's variant runs next; wait for more of its requests until its batch is full or
    // the oldest has waited max_queue_delay_us.
    std::shared_ptr<ModelVariant> variant = queue_.front()->variant;
    const Clock::time_point until = queue_.front()->arrived + std::chrono::microseconds(policy_.max_queue_delay_us);
    while (!stopping_ && queued_images_of(variant.get()) < policy_.max_batch && Clock::now() < until) {
      wake.wait_until(lock, until);
    }
    jobs.clear();
    std::int64_t images = 0;
    const Clock::time_point now = Clock::now();
    for (auto it = queue_.begin(); it != queue_.end();) {
      Job& job = **it;
      if (job.variant != variant) {
        ++it;
        continue;
      }
      if (now > job.deadline) {  // answered without running: its caller has waited long enough
        job.outcome.status = BatchOutcome::Status::timed_out;
        job.outcome.queue_seconds = std::chrono::duration<double>(now - job.arrived).count();
        job.done = true;
        job.finished.notify_one();
        it = queue_.erase(it);
        continue;
      }
      if (images + job.rows > policy_.max_batch) break;
      images += job.rows;
      jobs.push_back(std::move(*it));
      it = queue_.erase(it);
    }
    if (jobs.empty()) continue;
    busy_[static_cast<std::size_t>(instance)] = 1;
    if (!queue_.empty()) wake_an_idle_worker();  // more than this batch waits: the next worker takes it
    lock.unlock();
    const int wanted = images <= policy_.one_thread_batch ? 1 : threads;
    if (wanted != current) omp_set_num_threads(current = wanted);
    run_batch(*variant, instance, jobs, pixels, logits);
    lock.lock();
    busy_[static_cast<std::size_t>(instance)] = 0;
    for (const std::shared_ptr<Job>& job : jobs) {
      job->done = true;
      job->finished.notify_one();
    }
  }
}

void DynamicBatcher::run_batch(ModelVariant& variant, int instance, std::vector<std::shared_ptr<Job>>& jobs,
                               std::vector<float>& batch_pixels, std::vector<float>& batch_logits) {
  const std::int64_t pixels = variant.pixels_per_image(), classes = variant.classes();
  batch_pixels.resize(static_cast<std::size_t>(policy_.max_batch * pixels));
  batch_logits.resize(static_cast<std::size_t>(policy_.max_batch * classes));
  std::int64_t images = 0;
  for (const std::shared_ptr<Job>& job : jobs) {
    std::copy(job->pixels.begin(), job->pixels.end(), batch_pixels.begin() + images * pixels);
    images += job->rows;
  }
  const Clock::time_point start = Clock::now();
  std::string error;
  try {
    variant.infer(batch_pixels.data(), images, batch_logits.data(), instance);
  } catch (const std::exception& e) {
    error = e.what();
  }
  const double compute = std::chrono::duration<double>(Clock::now() - start).count();
  std::int64_t row = 0;
  for (const std::shared_ptr<Job>& job : jobs) {
    BatchOutcome& o = job->outcome;
    o.queue_seconds = std::chrono::duration<double>(start - job->arrived).count();
    o.compute_seconds = compute;
    o.batch_images = images;
    if (!error.empty()) {
      o.status = BatchOutcome::Status::failed;
      o.error = error;
    } else {
      o.logits.assign(batch_logits.begin() + row * classes, batch_logits.begin() + (row + job->rows) * classes);
    }
    row += job->rows;
  }
  if (observer_ && error.empty()) observer_(variant, images, compute);
}

}  // namespace mpx::serve
