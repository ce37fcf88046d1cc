// The installed Fashion-MNIST data set, loaded once per test program, for tests that train on real data;
// MPX_NEED_DATA() skips a test cleanly where it is not installed.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "mpx/io/fashion_mnist.h"

namespace mpx::test {

// MPX_FASHION_MNIST_DIR overrides the Debian package's directory (the GPU machine carries its own copy).
inline const io::FashionMnist* fashion_mnist() {
  static const io::FashionMnist* data = []() -> io::FashionMnist* {
    const char* override_dir = std::getenv("MPX_FASHION_MNIST_DIR");
    const std::string dir = override_dir != nullptr ? override_dir : io::kFashionMnistDefaultDir;
    if (!std::filesystem::exists(dir)) return nullptr;
    return new io::FashionMnist(io::load_fashion_mnist(dir));
  }();
  return data;
}

}  // namespace mpx::test

#define MPX_NEED_DATA()                        \
  if (::mpx::test::fashion_mnist() == nullptr) \
  GTEST_SKIP() << "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
