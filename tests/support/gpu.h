// MPX_SKIP_WITHOUT_GPU(): skips a `gpu`-labelled test with the reason when there is no usable CUDA device
// (or the build has no CUDA backend).
#pragma once

#include <gtest/gtest.h>

#include "mpx/backend/cuda.h"

#define MPX_SKIP_WITHOUT_GPU()                                                                       \
  do {                                                                                               \
    if (::mpx::cuda::devices().empty()) GTEST_SKIP() << "no GPU: " << ::mpx::cuda::no_device_reason(); \
  } while (0)
