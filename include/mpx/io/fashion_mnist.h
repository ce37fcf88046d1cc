// Fashion-MNIST from its four IDX files (Debian's dataset-fashion-mnist installs them in
// /usr/share/datasets/fashion-mnist), validated: 28x28 images, as many labels as images, labels 0-9.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpx::io {

inline constexpr const char* kFashionMnistDefaultDir = "/usr/share/datasets/fashion-mnist";

struct ImageSet {
  std::int64_t count = 0, height = 28, width = 28;
  std::vector<std::uint8_t> pixels;  // count * height * width
  std::vector<std::uint8_t> labels;  // count
};

struct FashionMnist {
  ImageSet train, test;
};

// Throws IoError; a missing directory or file names the command that installs the data set.
FashionMnist load_fashion_mnist(const std::string& dir);

// x = (pixel / 255 - mean) * inv_std with the mean and standard deviation of `set` (the training set, as the
// reference recipe normalises); training and evaluation use the same.
struct PixelNormalisation {
  float mean = 0, inv_std = 1;
  float operator()(std::uint8_t pixel) const { return (static_cast<float>(pixel) / 255.0f - mean) * inv_std; }
};
PixelNormalisation pixel_normalisation(const ImageSet& set);

}  // namespace mpx::io
