#include "mpx/serve/generation_workers.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "mpx/core/error.h"

namespace mpx::serve {
namespace {

using Clock = GenerationWorkers::Clock;

TEST(GenerationWorkers, RunsEachJobOnAWorkerThreadWithItsOwnInstanceAndTeamSize) {
  GenerationWorkers workers(2, 1);
  std::atomic<int> busy[2] = {0, 0};
  std::atomic<bool> shared_instance{false};
  std::mutex seen_mutex;
  std::set<std::thread::id> callers, runners;
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&] {
      for (int i = 0; i < 20; ++i) {
        double queued = -1;
        const bool ran = workers.run(Clock::now() + std::chrono::seconds(30), [&](int instance) {
          ASSERT_TRUE(instance == 0 || instance == 1);
          if (busy[instance].fetch_add(1) != 0) shared_instance = true;
          EXPECT_EQ(omp_get_max_threads(), 1);
          std::this_thread::sleep_for(std::chrono::microseconds(200));
          std::lock_guard<std::mutex> lock(seen_mutex);
          runners.insert(std::this_thread::get_id());
          busy[instance].fetch_sub(1);
        }, queued);
        EXPECT_TRUE(ran);
        EXPECT_GE(queued, 0);
        std::lock_guard<std::mutex> lock(seen_mutex);
        callers.insert(std::this_thread::get_id());
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_FALSE(shared_instance) << "two jobs ran on one instance at once";
  EXPECT_EQ(runners.size(), 2u) << "jobs ran on other threads than the two workers";
  for (const std::thread::id& id : callers) EXPECT_EQ(runners.count(id), 0u);
}

TEST(GenerationWorkers, AJobNoWorkerTookBeforeItsDeadlineDoesNotRun) {
  GenerationWorkers workers(1, 1);
  std::atomic<bool> release{false};
  std::thread holder([&] {
    double q = 0;
    workers.run(Clock::now() + std::chrono::seconds(30), [&](int) {
      while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }, q);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the holder has the only worker
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    release = true;
  });
  bool ran_late = false;
  double queued = 0;
  EXPECT_FALSE(workers.run(Clock::now() + std::chrono::milliseconds(10), [&](int) { ran_late = true; }, queued));
  EXPECT_FALSE(ran_late);
  EXPECT_GT(queued, 0.01);
  releaser.join();
  holder.join();
}

TEST(GenerationWorkers, RethrowsWhatTheJobThrewAndKeepsServing) {
  GenerationWorkers workers(1, 1);
  double q = 0;
  EXPECT_THROW(workers.run(Clock::now() + std::chrono::seconds(5), [](int) { throw InvalidArgument("bad token"); }, q),
               InvalidArgument);
  bool ran = false;
  EXPECT_TRUE(workers.run(Clock::now() + std::chrono::seconds(5), [&](int) { ran = true; }, q));
  EXPECT_TRUE(ran);
}

TEST(GenerationWorkers, RefusesAWorkerlessPool) {
  EXPECT_THROW(GenerationWorkers(0, 1), InvalidArgument);
  EXPECT_THROW(GenerationWorkers(1, 0), InvalidArgument);
}

}  // namespace
}  // namespace mpx::serve
