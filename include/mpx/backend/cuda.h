// The CUDA backend's public face. Plain C++ only: no CUDA header leaks out of src/backend/cuda/.
// When mpx is built without CUDA every function still links: queries answer "none", work throws
// mpx::NotAvailable with the reason.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "mpx/numeric/convert.h"
#include "mpx/numeric/dtype.h"

namespace mpx::cuda {

bool compiled();  // was the CUDA backend built into this binary?

struct DeviceInfo {
  int index = 0;
  std::string name;
  int compute_major = 0, compute_minor = 0;
  int multiprocessors = 0;
  std::size_t total_bytes = 0, free_bytes = 0;
};

struct RuntimeInfo {
  int driver_version = 0;   // e.g. 13000 for 13.0; 0 when no driver
  int runtime_version = 0;  // the CUDA runtime mpx was built with
};

// Devices visible to this process; empty when there are none, no driver, or no CUDA build.
std::vector<DeviceInfo> devices();
RuntimeInfo runtime_info();
// Why devices() is empty, in one line a user can act on ("no CUDA device", "driver too old", ...).
std::string no_device_reason();

// cuBLASLt, which matrix products need (opened on first use): "cuBLASLt 13.0.2", or why it cannot be used.
std::string blas_library();
// NCCL, which data-parallel training on CUDA needs (opened on first use): "NCCL 2.28.3 (libnccl.so.2)", or why
// it cannot be used.
std::string collectives_library();

// Throws NotAvailable with no_device_reason() unless a device can be used.
void require_device();

// An owning device allocation (plain cudaMalloc, never managed memory).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  void copy_from_host(const void* src, std::size_t bytes);
  void copy_to_host(void* dst, std::size_t bytes) const;

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

// Same contract and bit-identical results as numeric::convert, on device pointers. Returns when done.
void convert(const void* src, DType src_type, void* dst, DType dst_type, std::size_t count,
             numeric::Fp8Overflow fp8_overflow = numeric::Fp8Overflow::saturate,
             numeric::ConversionStats* stats = nullptr);

// Same results as numeric::stochastic_round for the same (seed, first_index). dst_type: f16 or bf16.
void stochastic_round(const float* src, void* dst, DType dst_type, std::size_t count, std::uint64_t seed,
                      std::uint64_t first_index = 0);

void copy_device_to_device(void* dst, const void* src, std::size_t bytes);
void synchronize();

}  // namespace mpx::cuda
