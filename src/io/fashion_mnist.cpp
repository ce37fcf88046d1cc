#include "mpx/io/fashion_mnist.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "mpx/core/error.h"
#include "mpx/io/idx.h"

namespace mpx::io {

namespace {

std::string find_file(const std::string& dir, const std::string& stem) {
  for (const char* suffix : {".gz", ""}) {
    const std::string path = (std::filesystem::path(dir) / (stem + suffix)).string();
    if (std::filesystem::exists(path)) return path;
  }
  throw IoError("Fashion-MNIST file " + stem + "(.gz) not found in " + dir +
                "; install the data set with `sudo apt-get install dataset-fashion-mnist` or pass --data DIR");
}

ImageSet load_split(const std::string& dir, const std::string& images_stem, const std::string& labels_stem) {
  const std::string images_path = find_file(dir, images_stem), labels_path = find_file(dir, labels_stem);
  IdxArray images = read_idx(images_path);
  IdxArray labels = read_idx(labels_path);
  if (images.dims.size() != 3 || images.dims[1] != 28 || images.dims[2] != 28) {
    throw IoError("IDX file " + images_path + " does not hold 28x28 images");
  }
  if (labels.dims.size() != 1 || labels.dims[0] != images.dims[0]) {
    throw IoError("IDX file " + labels_path + " has " + std::to_string(labels.dims[0]) + " labels for " +
                  std::to_string(images.dims[0]) + " images in " + images_path);
  }
  for (std::size_t i = 0; i < labels.data.size(); ++i) {
    if (labels.data[i] > 9) {
      throw IoError("IDX file " + labels_path + ": label " + std::to_string(labels.data[i]) + " at index " +
                    std::to_string(i) + " is not a class 0-9");
    }
  }
  ImageSet set;
  set.count = images.dims[0];
  set.pixels = std::move(images.data);
  set.labels = std::move(labels.data);
  return set;
}

}  // namespace

FashionMnist load_fashion_mnist(const std::string& dir) {
  std::error_code ec;
  if (std::filesystem::exists(dir, ec) && !std::filesystem::is_directory(dir, ec)) {
    throw IoError("--data " + dir + " is a file, not a directory: pass the directory that holds the Fashion-MNIST "
                  "IDX files (train-images-idx3-ubyte[.gz], ...), by default " + std::string(kFashionMnistDefaultDir));
  }
  if (!std::filesystem::is_directory(dir)) {
    throw IoError("Fashion-MNIST directory " + dir +
                  " does not exist; install the data set with `sudo apt-get install dataset-fashion-mnist` or pass "
                  "--data DIR");
  }
  FashionMnist data;
  data.train = load_split(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte");
  data.test = load_split(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte");
  return data;
}

PixelNormalisation pixel_normalisation(const ImageSet& set) {
  double sum = 0, sum_sq = 0;
  for (std::uint8_t v : set.pixels) {
    const double x = v / 255.0;
    sum += x;
    sum_sq += x * x;
  }
  const auto n = static_cast<double>(std::max<std::size_t>(1, set.pixels.size()));
  const double mean = sum / n;
  return {static_cast<float>(mean), static_cast<float>(1.0 / std::sqrt(std::max(1e-12, sum_sq / n - mean * mean)))};
}

}  // namespace mpx::io
