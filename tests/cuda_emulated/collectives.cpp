// The emulated engine's stand-in for NCCL (src/backend/cuda/nccl_collectives.h): ranks are threads of one
// process, meeting by the token rank 0 shares; an all-reduce waits for every rank's tensor, sums them in
// rank order (16-bit values in FP32, rounded back once: what NCCL's ring does with two ranks) and writes
// the sum into each. Emulated streams run at once, so an all-reduce is done when it returns.
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "mpx/backend/cuda.h"
#include "mpx/numeric/convert.h"
#include "nccl_collectives.h"

namespace mpx::cuda {

namespace {

struct Meeting {
  std::mutex mutex;
  std::condition_variable cv;
  int size = 0;
  std::vector<const Tensor*> arrived;
  std::vector<float> sum;
  std::uint64_t round = 0;
  int read = 0;
};

std::mutex registry_mutex;
std::map<std::string, std::shared_ptr<Meeting>> registry;
std::uint64_t next_token = 0;

class EmulatedCollectives final : public backend::DeviceCollectives {
 public:
  EmulatedCollectives(std::shared_ptr<Meeting> m, int rank, std::chrono::milliseconds timeout)
      : meeting_(std::move(m)), rank_(rank), timeout_(timeout) {}

  void allreduce_sum(const Tensor& t) override {
    Meeting& m = *meeting_;
    std::unique_lock lock(m.mutex);
    const std::uint64_t round = m.round;
    m.arrived[static_cast<std::size_t>(rank_)] = &t;
    int present = 0;
    for (const Tensor* a : m.arrived) present += a != nullptr;
    if (present == m.size) {  // the last to arrive sums for everyone
      const auto n = static_cast<std::size_t>(t.numel());
      m.sum.assign(n, 0.0f);
      std::vector<float> wide(n);
      const auto widen = [&](const Tensor& a) {
        if (a.dtype() == DType::f32) return std::memcpy(wide.data(), a.data(), n * sizeof(float)), void();
        numeric::convert(a.data(), a.dtype(), wide.data(), DType::f32, n);
      };
      for (const Tensor* a : m.arrived) {
        widen(*a);
        for (std::size_t i = 0; i < n; ++i) m.sum[i] += wide[i];
      }
      for (const Tensor* a : m.arrived) {
        if (a->dtype() == DType::f32) {
          std::memcpy(a->data(), m.sum.data(), n * sizeof(float));
        } else {
          numeric::convert(m.sum.data(), DType::f32, a->data(), a->dtype(), n);
        }
      }
      for (const Tensor*& a : m.arrived) a = nullptr;
      ++m.round;
      m.cv.notify_all();
      return;
    }
    if (!m.cv.wait_for(lock, timeout_, [&] { return m.round != round; })) {
      throw backend::CollectiveFailed("emulated all-reduce: a rank did not arrive within the timeout");
    }
  }
  void wait(std::chrono::milliseconds) override {}

 private:
  std::shared_ptr<Meeting> meeting_;
  int rank_;
  std::chrono::milliseconds timeout_;
};

}  // namespace

std::string collectives_library() { return "emulated NCCL (ranks as threads of one process)"; }

std::unique_ptr<backend::DeviceCollectives> connect_nccl(DeviceContext&, const backend::CollectivesRendezvous& r) {
  std::string mine;
  if (r.rank == 0) {
    const std::lock_guard lock(registry_mutex);
    mine = "emulated-" + std::to_string(next_token++);
    auto m = std::make_shared<Meeting>();
    m->size = r.size;
    m->arrived.assign(static_cast<std::size_t>(r.size), nullptr);
    registry[mine] = m;
  }
  const std::string token = r.share_token(mine);
  const std::lock_guard lock(registry_mutex);
  const auto found = registry.find(token);
  if (found == registry.end()) throw backend::CollectiveFailed("emulated NCCL: no meeting " + token);
  return std::make_unique<EmulatedCollectives>(found->second, r.rank, r.timeout);
}

}  // namespace mpx::cuda
