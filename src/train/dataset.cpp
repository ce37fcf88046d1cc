#include "mpx/train/dataset.h"

#include <algorithm>
#include <cstring>

#include "mpx/core/error.h"

namespace mpx::train {

ImageDataset::ImageDataset(const io::ImageSet& images, io::PixelNormalisation normalise, std::int64_t limit)
    : images_(images), normalise_(normalise), count_(limit > 0 ? std::min(limit, images.count) : images.count) {}

void ImageDataset::gather(std::span<const std::int64_t> indices, void* x, void* labels) const {
  const std::int64_t pixels = images_.height * images_.width;
  auto* out = static_cast<float*>(x);
  auto* classes = static_cast<std::uint8_t*>(labels);
  for (std::size_t r = 0; r < indices.size(); ++r) {
    const std::uint8_t* src = images_.pixels.data() + indices[r] * pixels;
    for (std::int64_t i = 0; i < pixels; ++i) out[static_cast<std::int64_t>(r) * pixels + i] = normalise_(src[i]);
    classes[r] = images_.labels[static_cast<std::size_t>(indices[r])];
  }
}

TokenWindows::TokenWindows(std::shared_ptr<const std::vector<std::int32_t>> tokens, std::int64_t block_size,
                           const std::string& what, std::int64_t limit)
    : tokens_(std::move(tokens)), block_(block_size) {
  if (block_ <= 0) throw InvalidArgument("the block size must be positive, got " + std::to_string(block_));
  const auto available = static_cast<std::int64_t>(tokens_->size());
  // A window needs block + 1 tokens: its inputs and, one further on, its labels.
  count_ = available > block_ ? (available - 1) / block_ : 0;
  if (count_ == 0) {
    throw InvalidArgument(what + " holds " + std::to_string(available) + " tokens: too few for one window of " +
                          std::to_string(block_) + " (a block needs " + std::to_string(block_ + 1) +
                          "); use a smaller --block-size or more text");
  }
  if (limit > 0) count_ = std::min(count_, limit);
}

void TokenWindows::gather(std::span<const std::int64_t> indices, void* x, void* labels) const {
  auto* in = static_cast<std::int32_t*>(x);
  auto* next = static_cast<std::int32_t*>(labels);
  const auto bytes = static_cast<std::size_t>(block_) * sizeof(std::int32_t);
  for (std::size_t r = 0; r < indices.size(); ++r) {
    const std::int32_t* start = tokens_->data() + indices[r] * block_;
    std::memcpy(in + static_cast<std::int64_t>(r) * block_, start, bytes);
    std::memcpy(next + static_cast<std::int64_t>(r) * block_, start + 1, bytes);
  }
}

}  // namespace mpx::train
