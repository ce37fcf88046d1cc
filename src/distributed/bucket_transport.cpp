#include "bucket_transport.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

namespace mpx::distributed {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

// Runs the buckets' all-reduces in submission order, one at a time, off the compute thread.
class GradientSync::HostTransport final : public GradientSync::Transport {
 public:
  explicit HostTransport(ProcessGroup& group) : group_(group), thread_([this] { loop(); }) {}
  ~HostTransport() override {
    {
      const std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void submit(Bucket& b) override {
    {
      const std::lock_guard lock(mutex_);
      queue_.push_back(&b);
    }
    cv_.notify_all();
  }
  double wait(std::size_t count) override {
    std::unique_lock lock(mutex_);
    done_cv_.wait(lock, [&] { return done_ >= count; });
    done_ = 0;
    const double s = seconds_;
    seconds_ = 0;
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    return s;
  }

 private:
  void reduce(Bucket& b) {
    const Tensor& sent = b.sent();
    if (sent.dtype() == DType::f32) {
      group_.allreduce_sum(std::span<float>(sent.data_as<float>(), b.elements));
    } else {
      group_.allreduce_sum_16(std::span<std::uint16_t>(static_cast<std::uint16_t*>(sent.data()), b.elements), sent.dtype());
    }
    if (b.measured) group_.allreduce_sum(std::span<float>(b.reference.data_as<float>(), b.elements));
  }
  void loop() {
    std::unique_lock lock(mutex_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      Bucket* b = queue_.front();
      queue_.pop_front();
      const bool failed = error_ != nullptr;
      lock.unlock();
      std::exception_ptr error;
      const auto start = Clock::now();
      if (!failed) {  // after a failure the rest only count as done: every rank stops anyway
        try {
          reduce(*b);
        } catch (...) {
          error = std::current_exception();
        }
      }
      lock.lock();
      seconds_ += seconds_since(start);
      if (error && !error_) error_ = error;
      ++done_;
      done_cv_.notify_all();
    }
  }

  ProcessGroup& group_;
  std::mutex mutex_;
  std::condition_variable cv_, done_cv_;
  std::deque<Bucket*> queue_;
  std::size_t done_ = 0;
  double seconds_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

// Issues each bucket's all-reduce on the device collectives' stream as it is packed (nothing blocks during
// backward); wait() blocks until the last is done, which is all that the host can time.
class GradientSync::DeviceTransport final : public GradientSync::Transport {
 public:
  DeviceTransport(ProcessGroup& group, std::unique_ptr<backend::DeviceCollectives> collectives)
      : group_(group), collectives_(std::move(collectives)) {}
  void submit(Bucket& b) override {
    try {
      collectives_->allreduce_sum(b.sent());
      if (b.measured) collectives_->allreduce_sum(b.reference);
    } catch (const backend::CollectiveFailed& e) {
      group_.fail("a gradient all-reduce on the GPU", e);
    }
  }
  double wait(std::size_t) override {
    const auto start = Clock::now();
    try {
      collectives_->wait(group_.timeout());
    } catch (const backend::CollectiveFailed& e) {
      group_.fail("a gradient all-reduce on the GPU", e);
    }
    return seconds_since(start);
  }

 private:
  ProcessGroup& group_;
  std::unique_ptr<backend::DeviceCollectives> collectives_;
};

std::unique_ptr<GradientSync::Transport> GradientSync::host_transport(ProcessGroup& group) {
  return std::make_unique<GradientSync::HostTransport>(group);
}

std::unique_ptr<GradientSync::Transport> GradientSync::device_transport(ProcessGroup& group, backend::Backend& backend) {
  backend::CollectivesRendezvous rendezvous;
  rendezvous.rank = group.rank();
  rendezvous.size = group.size();
  rendezvous.timeout = group.timeout();
  rendezvous.share_token = [&group](const std::string& mine) { return group.broadcast("device_collectives", mine); };
  std::unique_ptr<backend::DeviceCollectives> collectives;
  try {
    collectives = backend.connect_collectives(rendezvous);
  } catch (const backend::CollectiveFailed& e) {
    group.fail("connecting the ranks' " + backend.device_name() + " collectives", e);
  }
  if (!collectives) return nullptr;
  return std::make_unique<GradientSync::DeviceTransport>(group, std::move(collectives));
}

}  // namespace mpx::distributed
