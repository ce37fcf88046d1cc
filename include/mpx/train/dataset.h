// What a trainer reads: numbered samples of one shape and dtype with their labels, gathered into a host
// batch. Fashion-MNIST images with one class label each; token windows of a text whose labels are the
// same window shifted by one (next-token prediction).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mpx/io/fashion_mnist.h"
#include "mpx/tensor/tensor.h"

namespace mpx::train {

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual std::int64_t size() const = 0;
  virtual Shape sample_shape() const = 0;  // one sample, without the batch dimension
  virtual DType sample_dtype() const = 0;
  virtual DType label_dtype() const { return DType::u8; }  // u8 classes or i32 token ids
  virtual std::int64_t labels_per_sample() const { return 1; }
  // Writes samples `indices` (each < size()) into `x` (host memory: indices.size() samples of sample_shape
  // in sample_dtype, batch first) and their labels into `labels` (labels_per_sample each, label_dtype).
  virtual void gather(std::span<const std::int64_t> indices, void* x, void* labels) const = 0;
};

// Fashion-MNIST images as NHWC [28, 28, 1] FP32: (pixel / 255 - mean) / std with the training set's mean
// and standard deviation (as the reference recipe), the first `limit` images only when limit > 0.
class ImageDataset final : public Dataset {
 public:
  ImageDataset(const io::ImageSet& images, io::PixelNormalisation normalise, std::int64_t limit = 0);
  std::int64_t size() const override { return count_; }
  Shape sample_shape() const override { return {images_.height, images_.width, 1}; }
  DType sample_dtype() const override { return DType::f32; }
  void gather(std::span<const std::int64_t> indices, void* x, void* labels) const override;

 private:
  const io::ImageSet& images_;
  io::PixelNormalisation normalise_;
  std::int64_t count_;
};

// Next-token windows over a token stream: sample i is tokens [i * block, i * block + block) as i32 ids
// ([block]), its labels the tokens one further on. Windows do not overlap; the stream keeps one token past
// the last window for its labels. The first `limit` windows only when limit > 0.
class TokenWindows final : public Dataset {
 public:
  // Throws InvalidArgument when the stream holds no whole window (naming `what`, the stream's source).
  TokenWindows(std::shared_ptr<const std::vector<std::int32_t>> tokens, std::int64_t block_size,
               const std::string& what, std::int64_t limit = 0);
  std::int64_t size() const override { return count_; }
  Shape sample_shape() const override { return {block_}; }
  DType sample_dtype() const override { return DType::i32; }
  DType label_dtype() const override { return DType::i32; }
  std::int64_t labels_per_sample() const override { return block_; }
  void gather(std::span<const std::int64_t> indices, void* x, void* labels) const override;
  std::int64_t tokens() const { return static_cast<std::int64_t>(tokens_->size()); }

 private:
  std::shared_ptr<const std::vector<std::int32_t>> tokens_;
  std::int64_t block_, count_;
};

}  // namespace mpx::train
