// DeviceContext: device selection, one non-blocking stream, and a DevicePool over cudaMalloc.
#include <cuda_runtime.h>

#include <string>

#include "check.h"
#include "mpx/backend/cuda.h"
#include "mpx/backend/cuda_context.h"

namespace mpx::cuda {

namespace {

class CudaRawMemory : public backend::RawDeviceMemory {
 public:
  CudaRawMemory(int device, std::string name) : device_(device), name_(std::move(name)) {}
  void* allocate(std::size_t bytes) override {
    void* p = nullptr;
    const cudaError_t status = cudaMalloc(&p, bytes);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky: clear it so the pool can release its cache and retry
      return nullptr;
    }
    MPX_CUDA_CHECK(status);
    return p;
  }
  void release(void* p) noexcept override { cudaFree(p); }
  std::size_t free_bytes() const override {
    std::size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) cudaGetLastError();
    return free_bytes;
  }
  std::string name() const override { return name_; }

 private:
  int device_;
  std::string name_;
};

}  // namespace

struct DeviceContext::Impl {
  Impl(int index, std::string label) : index(index), name(std::move(label)), raw(index, name), pool(raw) {}
  int index;
  std::string name;
  cudaStream_t stream = nullptr;
  CudaRawMemory raw;
  backend::DevicePool pool;
};

DeviceContext::DeviceContext(int device_index) {
  require_device();
  const auto all = devices();
  if (device_index < 0 || device_index >= static_cast<int>(all.size())) {
    throw InvalidArgument("no CUDA device " + std::to_string(device_index) + ": this machine has " +
                          std::to_string(all.size()));
  }
  MPX_CUDA_CHECK(cudaSetDevice(device_index));
  impl_ = std::make_unique<Impl>(device_index, "cuda:" + std::to_string(device_index) + " (" + all[device_index].name + ")");
  MPX_CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
}

DeviceContext::~DeviceContext() {
  if (impl_ && impl_->stream != nullptr) {
    cudaStreamSynchronize(impl_->stream);  // nothing may still use the pool's blocks
    impl_->pool.release_cached();
    cudaStreamDestroy(impl_->stream);
  }
}

int DeviceContext::index() const { return impl_->index; }
const std::string& DeviceContext::name() const { return impl_->name; }
backend::DevicePool& DeviceContext::pool() { return impl_->pool; }
const backend::DevicePool& DeviceContext::pool() const { return impl_->pool; }
void* DeviceContext::stream() const { return impl_->stream; }
void DeviceContext::synchronize() const { MPX_CUDA_CHECK(cudaStreamSynchronize(impl_->stream)); }

void DeviceContext::download(void* host, const void* device, std::size_t bytes) const {
  MPX_CUDA_CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, impl_->stream));
  synchronize();
}

void DeviceContext::upload(void* device, const void* host, std::size_t bytes) const {
  MPX_CUDA_CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, impl_->stream));
  synchronize();
}

struct CapturedGraph::Impl {
  DeviceContext& context;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
};

CapturedGraph::CapturedGraph(DeviceContext& context, const std::function<void()>& enqueue)
    : impl_(std::make_unique<Impl>(Impl{context})) {
  auto stream = static_cast<cudaStream_t>(context.stream());
  // Thread-local mode: other threads may keep using CUDA (and the pool) while this one records.
  MPX_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    enqueue();
  } catch (...) {
    cudaGraph_t partial = nullptr;
    cudaStreamEndCapture(stream, &partial);  // leave the stream usable
    if (partial) cudaGraphDestroy(partial);
    throw;
  }
  MPX_CUDA_CHECK(cudaStreamEndCapture(stream, &impl_->graph));
  MPX_CUDA_CHECK(cudaGraphInstantiate(&impl_->exec, impl_->graph, 0));
}

CapturedGraph::~CapturedGraph() {
  if (impl_->exec) cudaGraphExecDestroy(impl_->exec);
  if (impl_->graph) cudaGraphDestroy(impl_->graph);
}

void CapturedGraph::launch() {
  MPX_CUDA_CHECK(cudaGraphLaunch(impl_->exec, static_cast<cudaStream_t>(impl_->context.stream())));
}

std::size_t CapturedGraph::nodes() const {
  std::size_t count = 0;
  MPX_CUDA_CHECK(cudaGraphGetNodes(impl_->graph, nullptr, &count));
  return count;
}

}  // namespace mpx::cuda
