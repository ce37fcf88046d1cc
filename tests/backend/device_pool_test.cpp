// DevicePool over a fake device with a fixed capacity: reuse without driver calls, per-category accounting,
// the waste rule, cache release before giving up, and an out-of-memory message a user can act on.
#include <gtest/gtest.h>

#include <cstdlib>
#include <set>
#include <string>

#include "mpx/backend/device_pool.h"
#include "mpx/core/error.h"

namespace mpx::backend {
namespace {

class FakeDevice : public RawDeviceMemory {
 public:
  explicit FakeDevice(std::size_t capacity) : capacity_(capacity) {}
  ~FakeDevice() override { EXPECT_TRUE(live_.empty()) << live_.size() << " blocks never returned to the device"; }
  void* allocate(std::size_t bytes) override {
    ++calls;
    if (bytes > capacity_ - used_) return nullptr;
    void* p = std::malloc(bytes);
    used_ += bytes;
    live_.insert(p);
    sizes_[p] = bytes;
    return p;
  }
  void release(void* p) noexcept override {
    used_ -= sizes_[p];
    live_.erase(p);
    std::free(p);
  }
  std::size_t free_bytes() const override { return capacity_ - used_; }
  std::string name() const override { return "fake:0"; }
  int calls = 0;

 private:
  std::size_t capacity_, used_ = 0;
  std::set<void*> live_;
  std::map<void*, std::size_t> sizes_;
};

TEST(DevicePool, ReusesAFreedBlockWithoutAskingTheDevice) {
  FakeDevice device(1 << 20);
  DevicePool pool(device);
  void* first = nullptr;
  {
    auto a = pool.allocate(1000, MemoryCategory::activations);
    first = a.get();
  }
  auto b = pool.allocate(900, MemoryCategory::activations);  // rounds to the same 1024-byte block
  EXPECT_EQ(b.get(), first);
  EXPECT_EQ(device.calls, 1);
  EXPECT_EQ(pool.stats().reuses, 1u);
  EXPECT_EQ(pool.stats().reserved_bytes, 1024u);
}

TEST(DevicePool, AccountsBytesPerCategoryWithPeaks) {
  FakeDevice device(1 << 20);
  DevicePool pool(device);
  auto w = pool.allocate(4096, MemoryCategory::weights);
  {
    auto g = pool.allocate(8192, MemoryCategory::gradients);
    EXPECT_EQ(pool.memory().current(MemoryCategory::gradients), 8192u);
    EXPECT_EQ(pool.memory().current_total(), 4096u + 8192u);
  }
  EXPECT_EQ(pool.memory().current(MemoryCategory::gradients), 0u);
  EXPECT_EQ(pool.memory().peak(MemoryCategory::gradients), 8192u);
  EXPECT_EQ(pool.memory().peak_total(), 4096u + 8192u);
  EXPECT_EQ(pool.stats().cached_bytes, 8192u);
}

TEST(DevicePool, DoesNotPinAHugeCachedBlockForASmallRequest) {
  FakeDevice device(1 << 24);
  DevicePool pool(device);
  { auto big = pool.allocate(1 << 20, MemoryCategory::workspace); }
  auto small = pool.allocate(1024, MemoryCategory::workspace);
  EXPECT_EQ(device.calls, 2);  // a fresh small block, the large one stays cached
  EXPECT_EQ(pool.stats().cached_bytes, std::size_t{1} << 20);
}

TEST(DevicePool, ReleasesTheCacheAndRetriesBeforeGivingUp) {
  FakeDevice device(3 << 20);
  DevicePool pool(device);
  { auto a = pool.allocate(2 << 20, MemoryCategory::activations); }  // cached, 1 MiB left on the device
  auto b = pool.allocate(3 << 20, MemoryCategory::activations);     // fits only once the cache is returned
  EXPECT_NE(b.get(), nullptr);
  EXPECT_EQ(pool.stats().cache_flushes, 1u);
  EXPECT_EQ(pool.stats().reserved_bytes, std::size_t{3} << 20);
}

TEST(DevicePool, OutOfMemoryNamesTheSizeWhatIsFreeAndWhatMpxHolds) {
  FakeDevice device(8 << 20);
  DevicePool pool(device);
  auto weights = pool.allocate(6 << 20, MemoryCategory::master_weights);
  try {
    pool.allocate(4 << 20, MemoryCategory::activations);
    FAIL() << "expected OutOfMemory";
  } catch (const OutOfMemory& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("asked for 4194304 bytes (4 MiB) of activations"), std::string::npos) << message;
    EXPECT_NE(message.find("the device has 2 MiB free"), std::string::npos) << message;
    EXPECT_NE(message.find("master_weights 6 MiB"), std::string::npos) << message;
    EXPECT_NE(message.find("fake:0"), std::string::npos) << message;
  }
  EXPECT_EQ(pool.memory().current(MemoryCategory::activations), 0u);  // nothing half-accounted
}

TEST(DevicePool, AnImpossibleSizeIsOutOfMemoryNotAWrapAround) {
  FakeDevice device(1 << 20);
  DevicePool pool(device);
  EXPECT_THROW(pool.allocate(~std::size_t{0} - 10, MemoryCategory::workspace), OutOfMemory);
}

TEST(DevicePool, ZeroBytesIsAnEmptyBlock) {
  FakeDevice device(1 << 20);
  DevicePool pool(device);
  EXPECT_EQ(pool.allocate(0, MemoryCategory::workspace), nullptr);
  EXPECT_EQ(device.calls, 0);
}

TEST(DevicePool, RejectsAGranularityThatIsNotAPowerOfTwo) {
  FakeDevice device(1 << 20);
  EXPECT_THROW(DevicePool(device, 384), InvalidArgument);
}

}  // namespace
}  // namespace mpx::backend
