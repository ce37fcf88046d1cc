// Tensor: a dtype, a shape and a reference-counted, 64-byte aligned buffer whose bytes are accounted to a
// MemoryCategory, on the CPU or a CUDA device. Host code may touch data() only of CPU tensors; a backend
// (mpx/backend/backend.h) allocates and computes on its own device's tensors.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mpx/numeric/dtype.h"
#include "mpx/tensor/memory.h"

namespace mpx {

enum class Device : std::uint8_t { cpu, cuda };

using Shape = std::vector<std::int64_t>;
std::int64_t numel(const Shape& shape);
std::string to_string(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  // Uninitialised memory. `tracker` may be null (nothing is accounted); when given it must outlive the
  // tensor and every copy of it (an engine Context outlives the layers that allocate from it).
  static Tensor empty(const Shape& shape, DType dtype, MemoryCategory category, MemoryTracker* tracker);
  static Tensor zeros(const Shape& shape, DType dtype, MemoryCategory category, MemoryTracker* tracker);
  // Memory a backend allocated (its accounting travels with `buffer`'s deleter), on `device`.
  static Tensor wrap(std::shared_ptr<void> buffer, const Shape& shape, DType dtype, Device device);

  bool defined() const { return buffer_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  std::int64_t dim(std::size_t i) const { return shape_.at(i); }
  std::int64_t numel() const { return mpx::numel(shape_); }
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * size_bytes(dtype_); }
  Device device() const { return device_; }

  void* data() const { return data_; }
  // Typed access; throws InvalidArgument if T does not match the dtype's size and kind.
  template <class T>
  T* data_as() const;

  // Same memory, another shape with the same number of elements.
  Tensor reshaped(const Shape& shape) const;
  // Same memory, only the first `rows` entries of dimension 0 (a smaller batch in a planned buffer).
  Tensor first_rows(std::int64_t rows) const;
  // Same memory, `count` entries of dimension 0 from entry `begin` on.
  Tensor rows(std::int64_t begin, std::int64_t count) const;
  void fill_zero() const;

 private:
  std::shared_ptr<void> buffer_;
  void* data_ = nullptr;
  Shape shape_;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
};

const char* name(Device device);

}  // namespace mpx
