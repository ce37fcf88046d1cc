// What a trainer reads: numbered samples of one shape and dtype with a class label each, gathered into a
// host batch. Fashion-MNIST images (normalised u8 pixels) today; token sequences in the transformer work.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "mpx/io/fashion_mnist.h"
#include "mpx/tensor/tensor.h"

namespace mpx::train {

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual std::int64_t size() const = 0;
  virtual Shape sample_shape() const = 0;  // one sample, without the batch dimension
  virtual DType sample_dtype() const = 0;
  // Writes samples `indices` (each < size()) into `x` (host memory: indices.size() samples of sample_shape
  // in sample_dtype, batch first) and their labels into `labels`.
  virtual void gather(std::span<const std::int64_t> indices, void* x, std::uint8_t* labels) const = 0;
};

// Fashion-MNIST images as NHWC [28, 28, 1] FP32: (pixel / 255 - mean) / std with the training set's mean
// and standard deviation (as the reference recipe), the first `limit` images only when limit > 0.
class ImageDataset final : public Dataset {
 public:
  ImageDataset(const io::ImageSet& images, io::PixelNormalisation normalise, std::int64_t limit = 0);
  std::int64_t size() const override { return count_; }
  Shape sample_shape() const override { return {images_.height, images_.width, 1}; }
  DType sample_dtype() const override { return DType::f32; }
  void gather(std::span<const std::int64_t> indices, void* x, std::uint8_t* labels) const override;

 private:
  const io::ImageSet& images_;
  io::PixelNormalisation normalise_;
  std::int64_t count_;
};

}  // namespace mpx::train
