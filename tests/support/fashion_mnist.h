// The installed Fashion-MNIST data set, loaded once per test program, for tests that train on real data;
// MPX_NEED_DATA() skips a test cleanly where it is not installed.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>

#include "mpx/io/fashion_mnist.h"

namespace mpx::test {

inline const io::FashionMnist* fashion_mnist() {
  static const io::FashionMnist* data = []() -> io::FashionMnist* {
    if (!std::filesystem::exists(io::kFashionMnistDefaultDir)) return nullptr;
    return new io::FashionMnist(io::load_fashion_mnist(io::kFashionMnistDefaultDir));
  }();
  return data;
}

}  // namespace mpx::test

#define MPX_NEED_DATA()                        \
  if (::mpx::test::fashion_mnist() == nullptr) \
  GTEST_SKIP() << "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
