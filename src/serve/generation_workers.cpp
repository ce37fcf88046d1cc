#include "mpx/serve/generation_workers.h"

#include <omp.h>

#include <exception>

#include "mpx/core/error.h"

namespace mpx::serve {

struct GenerationWorkers::Job {
  const std::function<void(int)>* run = nullptr;
  Clock::time_point enqueued, deadline;
  double queue_seconds = 0;
  bool done = false, ran = false;
  std::exception_ptr error;
  std::condition_variable finished;
};

GenerationWorkers::GenerationWorkers(int instances, int threads) {
  MPX_REQUIRE(instances >= 1, "a served GPT needs at least one generator instance");
  MPX_REQUIRE(threads >= 1, "a generator needs at least one thread");
  for (int k = 0; k < instances; ++k) threads_.emplace_back([this, k, threads] { work(k, threads); });
}

GenerationWorkers::~GenerationWorkers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  queued_.notify_all();
  for (std::thread& t : threads_) t.join();
}

bool GenerationWorkers::run(Clock::time_point deadline, const std::function<void(int)>& job, double& queue_seconds) {
  Job j;
  j.run = &job;
  j.enqueued = Clock::now();
  j.deadline = deadline;
  std::unique_lock<std::mutex> lock(mutex_);
  MPX_REQUIRE(!stopping_, "the generator workers have stopped");
  queue_.push_back(&j);
  queued_.notify_one();
  j.finished.wait(lock, [&] { return j.done; });
  queue_seconds = j.queue_seconds;
  if (j.error) std::rethrow_exception(j.error);
  return j.ran;
}

void GenerationWorkers::work(int instance, int threads) {
  omp_set_num_threads(threads);  // this worker's team for every generation it runs
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    queued_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and every queued job answered
    Job* j = queue_.front();
    queue_.pop_front();
    const Clock::time_point picked = Clock::now();
    j->queue_seconds = std::chrono::duration<double>(picked - j->enqueued).count();
    if (picked <= j->deadline) {
      lock.unlock();
      try {
        (*j->run)(instance);
        j->ran = true;
      } catch (...) {
        j->error = std::current_exception();
      }
      lock.lock();
    }
    j->done = true;
    j->finished.notify_one();
  }
}

}  // namespace mpx::serve
