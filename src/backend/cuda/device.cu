// Device discovery and plain device memory for the CUDA backend.
#include <cuda_runtime.h>

#include <utility>

#include "check.h"
#include "mpx/backend/cuda.h"

namespace mpx::cuda {

bool compiled() { return true; }

RuntimeInfo runtime_info() {
  RuntimeInfo info;
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess) info.driver_version = 0;
  if (cudaRuntimeGetVersion(&info.runtime_version) != cudaSuccess) info.runtime_version = 0;
  return info;
}

std::vector<DeviceInfo> devices() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" status so later queries start clean
    return {};
  }
  std::vector<DeviceInfo> out;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    DeviceInfo d;
    d.index = i;
    d.name = prop.name;
    d.compute_major = prop.major;
    d.compute_minor = prop.minor;
    d.multiprocessors = prop.multiProcessorCount;
    d.total_bytes = prop.totalGlobalMem;
    int previous = 0;
    if (cudaGetDevice(&previous) == cudaSuccess && cudaSetDevice(i) == cudaSuccess) {
      std::size_t free_bytes = 0, total_bytes = 0;
      if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) d.free_bytes = free_bytes;
      cudaSetDevice(previous);
    }
    out.push_back(std::move(d));
  }
  return out;
}

std::string no_device_reason() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  cudaGetLastError();
  if (status == cudaSuccess && count > 0) return "";
  if (status == cudaErrorInsufficientDriver) {
    const RuntimeInfo info = runtime_info();
    return info.driver_version == 0
               ? "no CUDA device (no NVIDIA driver found)"
               : "no usable CUDA device: the NVIDIA driver supports CUDA " + std::to_string(info.driver_version / 1000) +
                     "." + std::to_string(info.driver_version % 1000 / 10) + " but mpx needs " +
                     std::to_string(info.runtime_version / 1000) + "." +
                     std::to_string(info.runtime_version % 1000 / 10) + "; update the driver";
  }
  if (status == cudaSuccess || status == cudaErrorNoDevice) return "no CUDA device";
  return std::string("no usable CUDA device: ") + cudaGetErrorString(status);
}

void require_device() {
  const std::string reason = no_device_reason();
  if (!reason.empty()) throw NotAvailable(reason);
}

DeviceBuffer::DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  const cudaError_t status = cudaMalloc(&data_, bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();
    std::size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    data_ = nullptr;
    throw CudaError("out of device memory: asked for " + std::to_string(bytes) + " bytes, " +
                    std::to_string(free_bytes) + " of " + std::to_string(total_bytes) + " free (" +
                    cudaGetErrorString(status) + ")");
  }
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) cudaFree(data_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::copy_from_host(const void* src, std::size_t bytes) {
  if (bytes > bytes_) throw InvalidArgument("copy_from_host: " + std::to_string(bytes) + " bytes into a buffer of " + std::to_string(bytes_));
  MPX_CUDA_CHECK(cudaMemcpy(data_, src, bytes, cudaMemcpyHostToDevice));
}

void DeviceBuffer::copy_to_host(void* dst, std::size_t bytes) const {
  if (bytes > bytes_) throw InvalidArgument("copy_to_host: " + std::to_string(bytes) + " bytes from a buffer of " + std::to_string(bytes_));
  MPX_CUDA_CHECK(cudaMemcpy(dst, data_, bytes, cudaMemcpyDeviceToHost));
}

void copy_device_to_device(void* dst, const void* src, std::size_t bytes) {
  MPX_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, nullptr));
}

void synchronize() { MPX_CUDA_CHECK(cudaDeviceSynchronize()); }

}  // namespace mpx::cuda
