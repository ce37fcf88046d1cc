#include "mpx/train/dataset.h"

#include <algorithm>

namespace mpx::train {

ImageDataset::ImageDataset(const io::ImageSet& images, io::PixelNormalisation normalise, std::int64_t limit)
    : images_(images), normalise_(normalise), count_(limit > 0 ? std::min(limit, images.count) : images.count) {}

void ImageDataset::gather(std::span<const std::int64_t> indices, void* x, std::uint8_t* labels) const {
  const std::int64_t pixels = images_.height * images_.width;
  auto* out = static_cast<float*>(x);
  for (std::size_t r = 0; r < indices.size(); ++r) {
    const std::uint8_t* src = images_.pixels.data() + indices[r] * pixels;
    for (std::int64_t i = 0; i < pixels; ++i) out[static_cast<std::int64_t>(r) * pixels + i] = normalise_(src[i]);
    labels[r] = images_.labels[static_cast<std::size_t>(indices[r])];
  }
}

}  // namespace mpx::train
