// The CUDA runtime as the emulated build sees it (tests/cuda_emulated): device memory is host memory, every
// stream is one in-order queue that runs at once, a graph capture records what is enqueued and a graph
// launch replays it, and kernels run on the calling thread with one fiber (ucontext) per CUDA thread of a
// block, blocks one after another (so a `static thread_local` stands in for __shared__: the fibers of a
// launch share it, and launches on other host threads, such as data-parallel ranks, have their own). __syncthreads and the warp
// shuffles are barriers where the fibers switch: a shuffle or barrier that not every thread reaches
// aborts as a deadlock rather than passing.
// What it cannot show: speed, concurrent blocks' memory ordering, cub's and cuBLASLt's own code.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <ucontext.h>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static thread_local

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
inline thread_local dim3 threadIdx, blockIdx;
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline thread_local dim3 blockDim, gridDim;

enum cudaError_t { cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorInsufficientDriver = 35, cudaErrorNoDevice = 100 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaStreamCaptureMode { cudaStreamCaptureModeThreadLocal };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
constexpr unsigned cudaStreamNonBlocking = 1;
struct CUstream_st {};
using cudaStream_t = CUstream_st*;
struct CUevent_st {
  std::chrono::steady_clock::time_point at;
};
using cudaEvent_t = CUevent_st*;

namespace emulated {

using Work = std::function<void()>;
struct Graph {
  std::vector<Work> nodes;
};
inline thread_local Graph* capturing = nullptr;
// Runs `work` now, or records it into the graph being captured.
inline void enqueue(Work work) {
  if (capturing) {
    capturing->nodes.push_back(std::move(work));
  } else {
    work();
  }
}

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  dim3 thread;
  bool done = false;
  int waiting = -1;  // the barrier it waits at, -1 when it can run
};

// One block's CUDA threads as fibers on the calling thread, switched at barriers: barrier 0 is
// __syncthreads, barrier 1 + w warp w's (the shuffles).
struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  unsigned current = 0;
  std::vector<unsigned> arrived, size;
  std::vector<std::uint64_t> exchange;  // one slot per thread for the shuffles
  std::vector<std::uint64_t> dynamic_shared;
  const std::function<void()>* body = nullptr;
};
inline thread_local Block* block = nullptr;

inline void wait_at(int barrier) {
  Block& b = *block;
  if (++b.arrived[barrier] == b.size[barrier]) {
    b.arrived[barrier] = 0;
    for (Fiber& f : b.fibers) {
      if (f.waiting == barrier) f.waiting = -1;
    }
    return;
  }
  Fiber& self = b.fibers[b.current];
  self.waiting = barrier;
  swapcontext(&self.context, &b.scheduler);
}

inline void fiber_main() {
  Block& b = *block;
  (*b.body)();
  b.fibers[b.current].done = true;
  swapcontext(&b.fibers[b.current].context, &b.scheduler);
}

struct Config {
  dim3 grid, threads;
  std::size_t shared_bytes;
  Config(dim3 g, dim3 b, std::size_t shared = 0, cudaStream_t = nullptr) : grid(g), threads(b), shared_bytes(shared) {}
};

// The threads of one block walk every block of the grid in order, meeting at a barrier between blocks. A
// pass in which no thread can run while some wait is a deadlock (a barrier or shuffle that not every
// thread reaches): it aborts, naming the kernel's shape.
inline void run_grid(const Config& c, const std::function<void()>& kernel) {
  constexpr std::size_t kStackBytes = 256 * 1024;
  const unsigned n = c.threads.x * c.threads.y * c.threads.z, warps = (n + 31) / 32;
  Block b;
  b.fibers.resize(n);
  b.arrived.assign(1 + warps, 0);
  b.size.assign(1 + warps, 0);
  b.size[0] = n;
  for (unsigned w = 0; w < warps; ++w) b.size[1 + w] = std::min(32u, n - 32 * w);
  b.exchange.resize(n);
  b.dynamic_shared.assign(c.shared_bytes / 8 + 1, 0xDEADBEEFDEADBEEFull);  // garbage, as uninitialised shared memory
  const std::function<void()> body = [&] {
    for (unsigned z = 0; z < c.grid.z; ++z) {
      for (unsigned y = 0; y < c.grid.y; ++y) {
        for (unsigned x = 0; x < c.grid.x; ++x) {
          blockIdx = dim3(x, y, z);
          kernel();
          wait_at(0);
        }
      }
    }
  };
  b.body = &body;
  Block* outer = block;
  block = &b;
  blockDim = c.threads;
  gridDim = c.grid;
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = b.fibers[t];
    f.thread = dim3(t % c.threads.x, t / c.threads.x % c.threads.y, t / (c.threads.x * c.threads.y));
    f.stack.reset(new char[kStackBytes]);
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_main, 0);
  }
  for (unsigned finished = 0; finished < n;) {
    bool ran = false;
    finished = 0;
    for (unsigned t = 0; t < n; ++t) {
      Fiber& f = b.fibers[t];
      if (f.done) {
        ++finished;
        continue;
      }
      if (f.waiting >= 0) continue;
      b.current = t;
      threadIdx = f.thread;
      swapcontext(&b.scheduler, &f.context);
      ran = true;
    }
    if (!ran && finished < n) {
      std::fprintf(stderr, "emulated CUDA: deadlock in a kernel of %u x %u x %u blocks of %u threads\n", c.grid.x,
                   c.grid.y, c.grid.z, n);
      std::abort();
    }
  }
  block = outer;
}

// kernel<<<config>>>(args...): the arguments are taken by value when the launch is enqueued, as CUDA does.
template <class Kernel, class... Args>
void launch(const Config& c, Kernel kernel, Args... args) {
  enqueue([c, kernel, arguments = std::make_tuple(args...)] {
    run_grid(c, [&] { std::apply(kernel, arguments); });
  });
}

template <class T>
T shuffle_from(T value, int source_lane) {
  const auto linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned warp = linear / 32;
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  block->exchange[linear] = bits;
  wait_at(static_cast<int>(1 + warp));
  T out;
  std::memcpy(&out, &block->exchange[warp * 32 + static_cast<unsigned>(source_lane)], sizeof(T));
  wait_at(static_cast<int>(1 + warp));
  return out;
}

inline std::atomic<std::size_t> allocated{0};
constexpr std::size_t kDeviceBytes = std::size_t{16} << 30;  // what the emulated device says it has

}  // namespace emulated

inline void __syncthreads() { emulated::wait_at(0); }
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
// The round-to-nearest arithmetic intrinsics: one rounding each (this build is ISO C++, which never
// contracts a * b + c into an FMA).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
template <class T>
T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}
inline float atomicAdd(float* p, float v) {
  std::atomic_ref<float> a(*p);
  float old = a.load();
  while (!a.compare_exchange_weak(old, old + v)) {
  }
  return old;
}
template <class T>
T atomicMax(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <class T>
T atomicMin(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
// CUDA's integer min and max overloads.
template <class T>
T max(T a, T b) {
  return a < b ? b : a;
}
template <class T>
T min(T a, T b) {
  return b < a ? b : a;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    default: return "emulated CUDA error";
  }
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaDriverGetVersion(int* v) { return *v = 13000, cudaSuccess; }
inline cudaError_t cudaRuntimeGetVersion(int* v) { return *v = 13000, cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) { return *n = 1, cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { return *d = 0, cudaSuccess; }
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorNoDevice; }
struct cudaDeviceProp {
  char name[256];
  int major, minor, multiProcessorCount;
  std::size_t totalGlobalMem;
};
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::snprintf(p->name, sizeof p->name, "emulated on host threads");
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 4;
  p->totalGlobalMem = emulated::kDeviceBytes;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) { return *v = 4, cudaSuccess; }
template <class Kernel>
cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int) {
  return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(std::size_t* free_bytes, std::size_t* total) {
  *total = emulated::kDeviceBytes;
  *free_bytes = emulated::kDeviceBytes - std::min(emulated::kDeviceBytes, emulated::allocated.load());
  return cudaSuccess;
}
// Blocks remember their size in front of the data, 256-byte aligned as cudaMalloc's.
inline cudaError_t cudaMalloc(void** p, std::size_t bytes) {
  if (bytes > emulated::kDeviceBytes - std::min(emulated::kDeviceBytes, emulated::allocated.load())) {
    return cudaErrorMemoryAllocation;
  }
  auto* raw = static_cast<unsigned char*>(std::aligned_alloc(256, 256 + (bytes + 255) / 256 * 256));
  if (raw == nullptr) return cudaErrorMemoryAllocation;
  std::memcpy(raw, &bytes, sizeof bytes);
  emulated::allocated += bytes;
  *p = raw + 256;
  return cudaSuccess;
}
template <class T>
cudaError_t cudaMalloc(T** p, std::size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
inline cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  auto* raw = static_cast<unsigned char*>(p) - 256;
  std::size_t bytes = 0;
  std::memcpy(&bytes, raw, sizeof bytes);
  emulated::allocated -= bytes;
  std::free(raw);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind, cudaStream_t = nullptr) {
  emulated::enqueue([=] { std::memmove(dst, src, bytes); });
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind);
}
inline cudaError_t cudaMemsetAsync(void* p, int value, std::size_t bytes, cudaStream_t = nullptr) {
  emulated::enqueue([=] { std::memset(p, value, bytes); });
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return *s = new CUstream_st, cudaSuccess; }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) { return delete s, cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

using cudaGraph_t = emulated::Graph*;
using cudaGraphExec_t = emulated::Graph*;
inline cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) {
  emulated::capturing = new emulated::Graph;
  return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t* g) {
  *g = emulated::capturing;
  emulated::capturing = nullptr;
  return cudaSuccess;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t g, unsigned long long) { return *e = g, cudaSuccess; }
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t) {
  for (auto& node : e->nodes) node();
  return cudaSuccess;
}
inline cudaError_t cudaGraphGetNodes(cudaGraph_t g, void*, std::size_t* count) { return *count = g->nodes.size(), cudaSuccess; }
inline cudaError_t cudaGraphDestroy(cudaGraph_t g) { return delete g, cudaSuccess; }
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t) { return cudaSuccess; }  // the graph owns the nodes

inline cudaError_t cudaEventCreate(cudaEvent_t* e) { return *e = new CUevent_st, cudaSuccess; }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) { return delete e, cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  e->at = std::chrono::steady_clock::now();
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
  return cudaSuccess;
}
