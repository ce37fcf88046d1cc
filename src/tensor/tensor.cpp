#include "mpx/tensor/tensor.h"

#include <cstdlib>
#include <cstring>
#include <limits>

#include "mpx/core/error.h"
#include "mpx/numeric/bfloat16.h"
#include "mpx/numeric/half.h"

namespace mpx {

std::string_view name(MemoryCategory category) {
  constexpr std::string_view kNames[] = {"weights", "master_weights", "optimizer_state", "gradients",
                                         "activations", "workspace"};
  const auto i = static_cast<std::size_t>(category);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

void MemoryTracker::allocated(MemoryCategory category, std::size_t bytes) {
  const std::size_t i = index(category);
  current_[i] += bytes;
  current_total_ += bytes;
  if (current_[i] > peak_[i]) peak_[i] = current_[i];
  if (current_total_ > peak_total_) peak_total_ = current_total_;
}

void MemoryTracker::freed(MemoryCategory category, std::size_t bytes) {
  const std::size_t i = index(category);
  current_[i] -= bytes;
  current_total_ -= bytes;
}

std::int64_t numel(const Shape& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    if (d < 0) throw InvalidArgument("negative dimension in shape " + to_string(shape));
    if (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d) {
      throw InvalidArgument("shape " + to_string(shape) + " has too many elements");
    }
    n *= d;
  }
  return n;
}

std::string to_string(const Shape& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Tensor Tensor::empty(const Shape& shape, DType dtype, MemoryCategory category, MemoryTracker* tracker) {
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  const std::size_t bytes = t.bytes();
  const std::size_t rounded = (bytes + 63) / 64 * 64;
  void* memory = rounded == 0 ? nullptr : std::aligned_alloc(64, rounded);
  if (rounded != 0 && memory == nullptr) {
    throw Error("out of memory allocating " + std::to_string(bytes) + " bytes for a " + to_string(shape) + " " +
                std::string(name(dtype)) + " tensor (" + std::string(name(category)) + ")");
  }
  if (tracker) tracker->allocated(category, bytes);
  t.buffer_ = std::shared_ptr<void>(memory, [tracker, category, bytes](void* p) {
    std::free(p);
    if (tracker) tracker->freed(category, bytes);
  });
  t.data_ = memory;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, MemoryCategory category, MemoryTracker* tracker) {
  Tensor t = empty(shape, dtype, category, tracker);
  t.fill_zero();
  return t;
}

template <class T>
T* Tensor::data_as() const {
  constexpr bool kFloat = std::is_same_v<T, float>;
  const bool ok = (kFloat && dtype_ == DType::f32) || (std::is_same_v<T, double> && dtype_ == DType::f64) ||
                  (std::is_same_v<T, std::uint8_t> && dtype_ == DType::u8) ||
                  (std::is_same_v<T, std::int32_t> && dtype_ == DType::i32) ||
                  (std::is_same_v<T, std::int64_t> && dtype_ == DType::i64) ||
                  (std::is_same_v<T, numeric::Half> && dtype_ == DType::f16) ||
                  (std::is_same_v<T, numeric::BFloat16> && dtype_ == DType::bf16);
  if (!ok) throw InvalidArgument("tensor of dtype " + std::string(name(dtype_)) + " accessed as another type");
  return static_cast<T*>(data_);
}

template float* Tensor::data_as<float>() const;
template double* Tensor::data_as<double>() const;
template std::uint8_t* Tensor::data_as<std::uint8_t>() const;
template std::int32_t* Tensor::data_as<std::int32_t>() const;
template std::int64_t* Tensor::data_as<std::int64_t>() const;
template numeric::Half* Tensor::data_as<numeric::Half>() const;
template numeric::BFloat16* Tensor::data_as<numeric::BFloat16>() const;

Tensor Tensor::wrap(std::shared_ptr<void> buffer, const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.data_ = buffer.get();
  t.buffer_ = std::move(buffer);
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

const char* name(Device device) { return device == Device::cpu ? "cpu" : "cuda"; }

Tensor Tensor::reshaped(const Shape& shape) const {
  if (mpx::numel(shape) != numel()) {
    throw InvalidArgument("cannot reshape " + to_string(shape_) + " to " + to_string(shape) +
                          ": element counts differ");
  }
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::first_rows(std::int64_t rows) const {
  if (shape_.empty() || rows < 0 || rows > shape_[0]) {
    throw InvalidArgument("cannot take " + std::to_string(rows) + " rows of a " + to_string(shape_) + " tensor");
  }
  Tensor t = *this;
  t.shape_[0] = rows;
  return t;
}

Tensor Tensor::rows(std::int64_t begin, std::int64_t count) const {
  if (shape_.empty() || begin < 0 || count < 0 || begin + count > shape_[0]) {
    throw InvalidArgument("cannot take rows " + std::to_string(begin) + " to " + std::to_string(begin + count) + " of a " +
                          to_string(shape_) + " tensor");
  }
  Tensor t = *this;
  if (data_) t.data_ = static_cast<char*>(data_) + static_cast<std::size_t>(begin) * (bytes() / static_cast<std::size_t>(shape_[0]));
  t.shape_[0] = count;
  return t;
}

void Tensor::fill_zero() const {
  if (device_ != Device::cpu) throw InvalidArgument("fill_zero on a device tensor: use its backend's fill_zero");
  if (data_) std::memset(data_, 0, bytes());
}

}  // namespace mpx
