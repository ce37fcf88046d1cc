#include "mpx/backend/device_pool.h"

#include <string>

#include "mpx/core/error.h"

namespace mpx::backend {

namespace {

std::string mib(std::size_t bytes) {
  return std::to_string((bytes + (1u << 19)) >> 20) + " MiB";
}

// A cached block serves a request only when it wastes at most this share of itself: otherwise a small
// tensor could pin a large block that a later large tensor needs.
constexpr std::size_t kMaxWasteDivisor = 2;

}  // namespace

DevicePool::DevicePool(RawDeviceMemory& raw, std::size_t granularity_bytes) : raw_(raw), granularity_(granularity_bytes) {
  if (granularity_bytes == 0 || (granularity_bytes & (granularity_bytes - 1)) != 0) {
    throw InvalidArgument("DevicePool: granularity must be a power of two, got " + std::to_string(granularity_bytes));
  }
}

DevicePool::~DevicePool() { release_cached(); }

std::size_t DevicePool::round_up(std::size_t bytes) const { return (bytes + granularity_ - 1) & ~(granularity_ - 1); }

std::shared_ptr<void> DevicePool::allocate(std::size_t bytes, MemoryCategory category) {
  if (bytes == 0) return {};
  const std::size_t size = round_up(bytes);
  if (size < bytes) throw_out_of_memory(bytes, category);  // wrapped around: no device has that much
  void* pointer = nullptr;
  std::size_t block_size = size;
  auto cached = free_blocks_.lower_bound(size);
  if (cached != free_blocks_.end() && cached->first - size <= cached->first / kMaxWasteDivisor) {
    block_size = cached->first;
    pointer = cached->second;
    free_blocks_.erase(cached);
    stats_.cached_bytes -= block_size;
    ++stats_.reuses;
  } else {
    pointer = raw_.allocate(size);
    if (pointer == nullptr && !free_blocks_.empty()) {
      release_cached();  // fragmentation: give the cache back and ask once more
      ++stats_.cache_flushes;
      pointer = raw_.allocate(size);
    }
    if (pointer == nullptr) throw_out_of_memory(bytes, category);
    ++stats_.driver_allocations;
    stats_.reserved_bytes += size;
    if (stats_.reserved_bytes > stats_.peak_reserved_bytes) stats_.peak_reserved_bytes = stats_.reserved_bytes;
  }
  memory_.allocated(category, block_size);
  return std::shared_ptr<void>(pointer, [this, block_size, category](void* p) { give_back(p, block_size, category); });
}

void DevicePool::give_back(void* pointer, std::size_t bytes, MemoryCategory category) noexcept {
  memory_.freed(category, bytes);
  try {
    free_blocks_.emplace(bytes, pointer);
    stats_.cached_bytes += bytes;
  } catch (...) {  // no memory for the map node: return the block to the device instead of losing it
    raw_.release(pointer);
    stats_.reserved_bytes -= bytes;
  }
}

void DevicePool::release_cached() {
  for (const auto& [bytes, pointer] : free_blocks_) {
    raw_.release(pointer);
    stats_.reserved_bytes -= bytes;
  }
  free_blocks_.clear();
  stats_.cached_bytes = 0;
}

void DevicePool::throw_out_of_memory(std::size_t bytes, MemoryCategory category) const {
  std::string held;
  for (std::size_t c = 0; c < static_cast<std::size_t>(MemoryCategory::count); ++c) {
    const auto cat = static_cast<MemoryCategory>(c);
    if (memory_.current(cat) == 0) continue;
    held += (held.empty() ? "" : ", ") + std::string(name(cat)) + " " + mib(memory_.current(cat));
  }
  throw OutOfMemory("out of device memory on " + raw_.name() + ": asked for " + std::to_string(bytes) + " bytes (" +
                    mib(bytes) + ") of " + std::string(name(category)) + ", the device has " + mib(raw_.free_bytes()) +
                    " free; mpx holds " + mib(memory_.current_total()) + (held.empty() ? "" : " (" + held + ")") +
                    ". Use a smaller --batch-size or a lower-precision preset (bf16-mixed)");
}

}  // namespace mpx::backend
