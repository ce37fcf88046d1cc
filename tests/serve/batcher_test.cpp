#include "mpx/serve/batcher.h"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <cmath>
#include <thread>

#include "mpx/core/error.h"
#include "serve_test_support.h"

namespace mpx::serve {
namespace {

TEST(DynamicBatcher, RunsConcurrentRequestsTogetherAndGivesEachItsOwnLogits) {
  const std::string file = test::write_served_model("mlp", 4);
  const ModelSource source = resolve_model(file, "", "");
  ModelVariant alone(source, "32-true", 16);
  std::atomic<std::int64_t> largest{0};
  auto variant = std::make_shared<ModelVariant>(source, "32-true", 16);
  DynamicBatcher batcher({16, 20000, 0},
                         [&](const ModelVariant&, std::int64_t images, double) {
                           std::int64_t seen = largest.load();
                           while (images > seen && !largest.compare_exchange_weak(seen, images)) {
                           }
                         });
  const std::vector<float> images = test::random_images(64, 3);
  std::vector<std::vector<float>> answers(64);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < 64; i += 8) {
        std::vector<float> x(images.begin() + i * 784, images.begin() + (i + 1) * 784);
        const BatchOutcome o = batcher.run(variant, std::move(x), 1, Clock::now() + std::chrono::seconds(10));
        ASSERT_EQ(o.status, BatchOutcome::Status::ok);
        answers[static_cast<std::size_t>(i)] = o.logits;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_GT(largest.load(), 1);  // eight clients and a 20 ms delay: requests ran together
  std::vector<float> expected(10);
  for (int i = 0; i < 64; ++i) {
    alone.infer(images.data() + i * 784, 1, expected.data());
    for (int k = 0; k < 10; ++k) {
      EXPECT_NEAR(answers[static_cast<std::size_t>(i)][static_cast<std::size_t>(k)], expected[static_cast<std::size_t>(k)],
                  1e-5f * (1 + std::fabs(expected[static_cast<std::size_t>(k)])));
    }
  }
}

TEST(DynamicBatcher, AnswersARequestPastItsDeadlineAsTimedOutWithoutRunningIt) {
  const ModelSource source = resolve_model(test::write_served_model("mlp", 4), "", "");
  int batches = 0;
  auto variant = std::make_shared<ModelVariant>(source, "32-true", 4);
  DynamicBatcher batcher({4, 0, 0},
                         [&](const ModelVariant&, std::int64_t, double) { ++batches; });
  const BatchOutcome o = batcher.run(variant, test::random_images(1, 1), 1, Clock::now() - std::chrono::milliseconds(1));
  EXPECT_EQ(o.status, BatchOutcome::Status::timed_out);
  EXPECT_EQ(batches, 0);
  EXPECT_THROW(batcher.run(variant, test::random_images(5, 1), 5, Clock::now() + std::chrono::seconds(1)), InvalidArgument);
}

TEST(DynamicBatcher, TwoInstancesRunTwoBatchesAtOnceEachWithItsOwnActivations) {
  const ModelSource source = resolve_model(test::write_served_model("cnn", 4), "", "");
  auto variant = std::make_shared<ModelVariant>(source, "32-true", 8, "", 2);
  ModelVariant alone(source, "32-true", 8);
  std::mutex m;
  std::vector<std::pair<Clock::time_point, Clock::time_point>> spans;
  DynamicBatcher batcher({8, 0, 1, 2, 2}, [&](const ModelVariant&, std::int64_t, double seconds) {
    const Clock::time_point end = Clock::now();
    std::lock_guard<std::mutex> lock(m);
    spans.emplace_back(end - std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds)), end);
  });
  const std::vector<float> images = test::random_images(96, 5);
  std::vector<std::vector<float>> answers(96);
  // Whether two batches overlap depends on the scheduler: on a loaded 2-core machine (other tests running
  // beside this one) a round can happen to run one batch at a time, so up to five rounds are tried.
  bool overlapped = false;
  for (int round = 0; round < 5 && !overlapped; ++round) {
    {
      std::lock_guard<std::mutex> lock(m);
      spans.clear();
    }
    std::vector<std::thread> threads;
    for (int t = 0; t < 6; ++t) {
      threads.emplace_back([&, t] {
        for (int i = t; i < 96; i += 6) {
          std::vector<float> x(images.begin() + i * 784, images.begin() + (i + 1) * 784);
          answers[static_cast<std::size_t>(i)] = batcher.run(variant, std::move(x), 1, Clock::now() + std::chrono::seconds(30)).logits;
        }
      });
    }
    for (std::thread& t : threads) t.join();
    std::lock_guard<std::mutex> lock(m);
    for (std::size_t x = 0; x < spans.size(); ++x) {
      for (std::size_t y = x + 1; y < spans.size(); ++y) {
        overlapped |= spans[x].first < spans[y].second && spans[y].first < spans[x].second;
      }
    }
  }
  EXPECT_TRUE(overlapped) << "in five rounds of " << spans.size() << " batches, none ran at the same time as another";
  std::vector<float> expected(10);
  for (int i = 0; i < 96; ++i) {
    alone.infer(images.data() + i * 784, 1, expected.data());
    ASSERT_EQ(answers[static_cast<std::size_t>(i)].size(), 10u);
    for (int k = 0; k < 10; ++k) {
      EXPECT_NEAR(answers[static_cast<std::size_t>(i)][static_cast<std::size_t>(k)], expected[static_cast<std::size_t>(k)],
                  1e-5f * (1 + std::fabs(expected[static_cast<std::size_t>(k)])));
    }
  }
}

}  // namespace
}  // namespace mpx::serve
