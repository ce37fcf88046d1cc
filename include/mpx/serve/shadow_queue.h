// The queue and thread of an FP32 shadow, shared by the classifiers' ShadowComparer and a GPT's TextShadow:
// answered requests wait (up to `capacity`; more are dropped and counted, never slowing a response) for one
// worker thread at the lowest CPU priority with one OpenMP thread, which takes what queued up within
// `gather_seconds` (up to `max_weight`, at least one item) as one pass. What a pass throws counts its items
// as dropped: a comparison lost is never a crash off the response path.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace mpx::serve {

// The calling thread at the lowest CPU priority (Linux gives each thread its own nice value) and one
// OpenMP thread: the shadow's worker, so the variants answering requests keep the cores.
void become_background_thread();

template <class Item>
class ShadowQueue {
 public:
  struct Batching {
    double gather_seconds = 0;    // how long the first item waits for others to join its pass
    std::int64_t max_weight = 1;  // a pass takes items up to this total weight (at least one item)
    std::function<std::int64_t(const Item&)> weight = [](const Item&) { return std::int64_t{1}; };
  };
  using Pass = std::function<void(std::vector<Item>&)>;

  ShadowQueue(std::size_t capacity, Batching batching, Pass pass)
      : capacity_(capacity), batching_(std::move(batching)), pass_(std::move(pass)) {
    worker_ = std::thread([this] { work(); });
  }
  ~ShadowQueue() {  // runs what is queued, then stops
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    worker_.join();
  }
  ShadowQueue(const ShadowQueue&) = delete;
  ShadowQueue& operator=(const ShadowQueue&) = delete;

  bool submit(Item item) {  // false (and counted) when the queue is full
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ || queue_.size() >= capacity_) {
      ++dropped_;
      return false;
    }
    queue_.push_back(std::move(item));
    changed_.notify_all();
    return true;
  }
  std::uint64_t dropped() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return dropped_;
  }
  void drain() {  // blocks until everything submitted so far has been through a pass
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return queue_.empty() && !busy_; });
  }

 private:
  std::int64_t queued_weight_locked() const {
    std::int64_t w = 0;
    for (const Item& item : queue_) w += batching_.weight(item);
    return w;
  }
  void work() {
    become_background_thread();
    std::vector<Item> items;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(batching_.gather_seconds);
      while (!stopping_ && queued_weight_locked() < batching_.max_weight && std::chrono::steady_clock::now() < until) {
        changed_.wait_until(lock, until);
      }
      items.clear();
      std::int64_t weight = 0;
      do {
        weight += batching_.weight(queue_.front());
        items.push_back(std::move(queue_.front()));
        queue_.pop_front();
      } while (!queue_.empty() && weight + batching_.weight(queue_.front()) <= batching_.max_weight);
      busy_ = true;
      lock.unlock();
      try {
        pass_(items);
      } catch (const std::exception&) {
        std::lock_guard<std::mutex> count(mutex_);
        dropped_ += items.size();
      }
      lock.lock();
      busy_ = false;
      changed_.notify_all();
    }
  }

  std::size_t capacity_;
  Batching batching_;
  Pass pass_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Item> queue_;
  bool stopping_ = false, busy_ = false;
  std::uint64_t dropped_ = 0;
  std::thread worker_;
};

}  // namespace mpx::serve
