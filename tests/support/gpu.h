// MPX_SKIP_WITHOUT_GPU(): skips a `gpu`-labelled test with the reason when there is no usable CUDA device
// (or the build has no CUDA backend).
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "mpx/backend/cuda.h"

#define MPX_SKIP_WITHOUT_GPU()                                                                       \
  do {                                                                                               \
    if (::mpx::cuda::devices().empty()) GTEST_SKIP() << "no GPU: " << ::mpx::cuda::no_device_reason(); \
  } while (0)

namespace mpx::test {

// The emulated engine (tests/cuda_emulated): one device on host threads, where ranks may share it.
inline bool emulated_cuda() {
  const auto all = cuda::devices();
  return !all.empty() && all.front().name.find("emulated") != std::string::npos;
}

// Why this machine cannot run `ranks` data-parallel CUDA ranks (NCCL: one GPU each), or "" when it can.
inline std::string cannot_run_cuda_ranks(int ranks) {
  const auto all = cuda::devices();
  if (all.empty()) return "no GPU: " + cuda::no_device_reason();
  if (!emulated_cuda() && static_cast<int>(all.size()) < ranks) {
    return "NCCL needs one GPU per rank: " + std::to_string(ranks) + " ranks, " + std::to_string(all.size()) + " GPU(s) here";
  }
  return "";
}

// The device a rank of a test uses: its own GPU, or the one emulated device.
inline int device_of_test_rank(int rank) { return emulated_cuda() ? 0 : rank; }

}  // namespace mpx::test
