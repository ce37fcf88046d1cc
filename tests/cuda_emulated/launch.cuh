// Runs the CUDA engine's kernels on the host, for machines without a GPU: stands in for
// src/backend/cuda/launch.cuh when a kernel file is compiled by the host compiler (transform_kernels.py
// rewrites its launches into emulated::launch calls). Every CUDA thread of a block is a std::thread;
// __syncthreads and the warp shuffles are barriers, so a shuffle that not all 32 lanes reach hangs instead of
// passing (the test's timeout reports it). Blocks run one after another, which makes `static` stand in for
// __shared__. What it cannot show: timing, the memory model of concurrent blocks, cub's and cuBLASLt's own
// code (a stable std::sort stands in for cub's radix sort).
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "mpx/core/error.h"
#include "mpx/numeric/dtype.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(threads)
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

using cudaStream_t = void*;
constexpr int cudaFuncAttributeMaxDynamicSharedMemorySize = 0;
template <class Kernel>
int cudaFuncSetAttribute(Kernel, int, int) {
  return 0;
}
#define MPX_CUDA_CHECK(expr) (void)(expr)
#define MPX_CUDA_CHECK_LAUNCH(kernel_name, count) (void)0

namespace emulated {

struct Block {
  std::unique_ptr<std::barrier<>> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<std::uint64_t> exchange;  // one slot per thread for the shuffles
  std::vector<std::uint64_t> dynamic_shared;
};
inline Block* block = nullptr;

struct Config {
  dim3 grid, threads;
  std::size_t shared_bytes;
  Config(dim3 g, dim3 b, std::size_t shared = 0, void* /*stream*/ = nullptr) : grid(g), threads(b), shared_bytes(shared) {}
};

// The threads of one block walk every block of the grid in order, meeting at a barrier between blocks.
inline void launch(const Config& c, const std::function<void()>& kernel) {
  gridDim = c.grid;
  blockDim = c.threads;
  const unsigned n = c.threads.x;
  Block b;
  b.all = std::make_unique<std::barrier<>>(n);
  for (unsigned w = 0; w < (n + 31) / 32; ++w) b.warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, n - 32 * w)));
  b.exchange.resize(n);
  b.dynamic_shared.assign(c.shared_bytes / 8 + 1, 0xDEADBEEFDEADBEEFull);  // garbage, as uninitialised shared memory
  block = &b;
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < n; ++t) {
    threads.emplace_back([&, t] {
      threadIdx = dim3(t);
      for (unsigned z = 0; z < c.grid.z; ++z) {
        for (unsigned y = 0; y < c.grid.y; ++y) {
          for (unsigned x = 0; x < c.grid.x; ++x) {
            blockIdx = dim3(x, y, z);
            kernel();
            b.all->arrive_and_wait();
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  block = nullptr;
}

template <class T>
T shuffle_from(T value, int source_lane) {
  const int warp = static_cast<int>(threadIdx.x / 32);
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  block->exchange[threadIdx.x] = bits;
  block->warps[warp]->arrive_and_wait();
  T out;
  std::memcpy(&out, &block->exchange[warp * 32 + source_lane], sizeof(T));
  block->warps[warp]->arrive_and_wait();
  return out;
}

}  // namespace emulated

inline void __syncthreads() { emulated::block->all->arrive_and_wait(); }
template <class T>
T __shfl_sync(unsigned, T v, int lane) {
  return emulated::shuffle_from(v, lane);
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask) {
  return emulated::shuffle_from(v, static_cast<int>(threadIdx.x % 32) ^ mask);
}
template <class T>
T __shfl_down_sync(unsigned, T v, int delta) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  return emulated::shuffle_from(v, lane + delta < 32 ? lane + delta : lane);
}
inline int atomicMin(std::int32_t* p, std::int32_t v) {
  std::atomic_ref<std::int32_t> a(*p);
  std::int32_t old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}

#define MPX_GRID_STRIDE(i, count)                                                                  \
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < (count); \
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)

#include "elements.cuh"

namespace mpx::cuda {
class DeviceContext {};  // device pointers are host pointers here
}  // namespace mpx::cuda

namespace mpx::cuda::detail {
inline cudaStream_t stream_of(DeviceContext&) { return nullptr; }
inline std::uint8_t kind_of(DType t) {
  switch (t) {
    case DType::f32: return elements::kF32;
    case DType::f16: return elements::kF16;
    case DType::bf16: return elements::kBF16;
    default: throw InvalidArgument("CUDA kernels take f32, f16 or bf16 tensors, got " + std::string(name(t)));
  }
}
constexpr int kThreads = 256;
inline int blocks_for(std::int64_t count) {
  return static_cast<int>(std::clamp<std::int64_t>((count + kThreads - 1) / kThreads, 1, 65535));
}
}  // namespace mpx::cuda::detail

// cub's stable radix sort of (key, value) pairs, as a stable sort on the keys.
namespace cub {
struct DeviceRadixSort {
  static int SortPairs(void* scratch, std::size_t& bytes, const std::uint32_t* keys_in, std::uint32_t* keys_out,
                       const std::uint32_t* values_in, std::uint32_t* values_out, int count, int, int, void* = nullptr) {
    if (scratch == nullptr) {
      bytes = 16;
      return 0;
    }
    std::vector<std::pair<std::uint32_t, std::uint32_t>> pairs(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i) pairs[i] = {keys_in[i], values_in[i]};
    std::stable_sort(pairs.begin(), pairs.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (int i = 0; i < count; ++i) {
      keys_out[i] = pairs[i].first;
      values_out[i] = pairs[i].second;
    }
    return 0;
  }
};
}  // namespace cub
