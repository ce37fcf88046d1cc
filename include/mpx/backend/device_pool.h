// DevicePool: a caching allocator over a raw device allocator (cudaMalloc on GPUs; anything in tests).
// Freed blocks are kept by size and handed out again, so a training step allocates nothing from the
// driver after the first; bytes are accounted per MemoryCategory with peaks (what summary.json reports),
// and an allocation that does not fit even after the cache is released throws OutOfMemory with the size
// asked for, what the device has free and what mpx holds, by category. Plain C++: no CUDA header here.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>

#include "mpx/tensor/memory.h"

namespace mpx::backend {

// What the pool asks the device for. allocate returns nullptr when the memory is not there.
class RawDeviceMemory {
 public:
  virtual ~RawDeviceMemory() = default;
  virtual void* allocate(std::size_t bytes) = 0;
  virtual void release(void* pointer) noexcept = 0;
  virtual std::size_t free_bytes() const = 0;  // what the device still has free, for error messages
  virtual std::string name() const = 0;        // "cuda:0 (NVIDIA H100 80GB HBM3)"
};

struct DevicePoolStats {
  std::size_t reserved_bytes = 0, peak_reserved_bytes = 0;  // held from the device (in use + cached)
  std::size_t cached_bytes = 0;                             // free blocks kept for reuse
  std::size_t driver_allocations = 0, reuses = 0, cache_flushes = 0;
};

class DevicePool {
 public:
  // `raw` must outlive the pool. Blocks are rounded up to `granularity_bytes` (a power of two).
  explicit DevicePool(RawDeviceMemory& raw, std::size_t granularity_bytes = 512);
  ~DevicePool();  // returns every cached block; blocks still in use must have been dropped first
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  // A block of at least `bytes`, accounted to `category` until the last copy of the pointer is dropped.
  // The pool must outlive every block. Zero bytes gives an empty pointer.
  std::shared_ptr<void> allocate(std::size_t bytes, MemoryCategory category);
  // Hands every cached (free) block back to the device.
  void release_cached();

  const MemoryTracker& memory() const { return memory_; }  // bytes in use by category, with peaks
  const DevicePoolStats& stats() const { return stats_; }
  std::size_t round_up(std::size_t bytes) const;

 private:
  void give_back(void* pointer, std::size_t bytes, MemoryCategory category) noexcept;
  [[noreturn]] void throw_out_of_memory(std::size_t bytes, MemoryCategory category) const;

  RawDeviceMemory& raw_;
  std::size_t granularity_;
  std::multimap<std::size_t, void*> free_blocks_;  // by size
  MemoryTracker memory_;
  DevicePoolStats stats_;
};

}  // namespace mpx::backend
