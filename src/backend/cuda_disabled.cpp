// The CUDA backend's stand-in for builds without nvcc (MPX_CUDA=OFF, or AUTO with no toolkit).
#include "mpx/backend/cuda.h"
#include "mpx/core/error.h"

namespace mpx::cuda {

namespace {
[[noreturn]] void not_built() {
  throw NotAvailable("mpx was built without CUDA; install the CUDA toolkit and rebuild with -DMPX_CUDA=ON");
}
}  // namespace

bool compiled() { return false; }
std::vector<DeviceInfo> devices() { return {}; }
RuntimeInfo runtime_info() { return {}; }
std::string no_device_reason() { return "mpx was built without CUDA support"; }
void require_device() { not_built(); }

DeviceBuffer::DeviceBuffer(std::size_t) { not_built(); }
DeviceBuffer::~DeviceBuffer() = default;
DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept : data_(other.data_), bytes_(other.bytes_) {}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&&) noexcept { return *this; }
void DeviceBuffer::copy_from_host(const void*, std::size_t) { not_built(); }
void DeviceBuffer::copy_to_host(void*, std::size_t) const { not_built(); }

void convert(const void*, DType, void*, DType, std::size_t, numeric::Fp8Overflow, numeric::ConversionStats*) {
  not_built();
}
void stochastic_round(const float*, void*, DType, std::size_t, std::uint64_t, std::uint64_t) { not_built(); }
void copy_device_to_device(void*, const void*, std::size_t) { not_built(); }
void synchronize() { not_built(); }

}  // namespace mpx::cuda
