// The threads a served GPT generates on: `instances` workers, worker k always using instance k of every
// variant's generators, each with a fixed OpenMP team of `threads` (set once on its own thread). Requests
// arrive on many HTTP threads; if each ran its generation there, every HTTP thread would grow an OpenMP
// team of its own, and once the process holds more OpenMP threads than cores libgomp stops spinning between
// parallel regions and wakes its threads through futexes for every one of a token's ~40 regions: measured,
// that made generation 7 times slower from the second connection on. A fixed set of workers keeps the
// teams at the cores the server was given.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mpx::serve {

class GenerationWorkers {
 public:
  using Clock = std::chrono::steady_clock;
  GenerationWorkers(int instances, int threads);
  ~GenerationWorkers();  // finishes the jobs already queued, then joins
  GenerationWorkers(const GenerationWorkers&) = delete;
  GenerationWorkers& operator=(const GenerationWorkers&) = delete;

  // Runs job(instance) on the first free worker and waits for it; false (nothing ran) when no worker took
  // it before `deadline`. `queue_seconds` is the wait for a worker either way. Rethrows what the job threw.
  bool run(Clock::time_point deadline, const std::function<void(int instance)>& job, double& queue_seconds);

  int instances() const { return static_cast<int>(threads_.size()); }

 private:
  struct Job;
  void work(int instance, int threads);

  std::mutex mutex_;
  std::condition_variable queued_;
  std::deque<Job*> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace mpx::serve
