// DeviceContext: the one object that holds CUDA state for an engine: the device, a stream, a caching
// memory pool with per-category accounting, and the library handles kernels need. Plain C++: the stream
// is handed out as an opaque pointer so that no CUDA header leaks out of src/backend/cuda/.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "mpx/backend/device_pool.h"

namespace mpx::cuda {

class DeviceContext {
 public:
  // Throws NotAvailable (no device, no CUDA build) with the reason in one line.
  explicit DeviceContext(int device_index = 0);
  ~DeviceContext();
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  int index() const;
  const std::string& name() const;  // "cuda:0 (NVIDIA H100 80GB HBM3)"
  backend::DevicePool& pool();
  const backend::DevicePool& pool() const;
  void* stream() const;  // the cudaStream_t every operation of this context is enqueued on
  // Waits for the stream; a failure in an earlier kernel surfaces here as CudaError.
  void synchronize() const;
  // Device-to-host and host-to-device copies on the stream; they return when the copy is done.
  void download(void* host, const void* device, std::size_t bytes) const;
  void upload(void* device, const void* host, std::size_t bytes) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A sequence of kernels recorded once from the context's stream and replayed with one launch: what makes
// a small model's step cheap to issue. Every buffer the recorded kernels touch must outlive the graph.
class CapturedGraph {
 public:
  // Records what `enqueue` puts on the context's stream (nothing runs while recording).
  CapturedGraph(DeviceContext& context, const std::function<void()>& enqueue);
  ~CapturedGraph();
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;
  void launch();  // on the context's stream, asynchronously
  std::size_t nodes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpx::cuda
