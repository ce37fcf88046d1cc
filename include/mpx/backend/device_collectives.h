// Collectives among the ranks of a data-parallel job over tensors in a backend's device memory (NCCL on
// CUDA). A backend whose tensors live in host memory has none: the job's ProcessGroup (Gloo over TCP)
// reduces those. Plain C++: no CUDA or NCCL header leaks out of src/backend/cuda/.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "mpx/core/error.h"
#include "mpx/tensor/tensor.h"

namespace mpx::backend {

// A device collective did not complete within its timeout, or the library reported a failure (a peer
// gone, a broken connection). The communicator is aborted: every later call throws too.
class CollectiveFailed : public Error {
 public:
  using Error::Error;
};

class DeviceCollectives {
 public:
  virtual ~DeviceCollectives() = default;
  // Starts summing `t` (f32, f16 or bf16) over the ranks, in place: after every op the backend has queued
  // so far, off its compute stream, so that the backend's next ops overlap with it. Returns at once.
  virtual void allreduce_sum(const Tensor& t) = 0;
  // Waits until every started sum is done (the backend's next ops then see the sums). Throws
  // CollectiveFailed after `timeout` without progress, or when the library reports an error.
  virtual void wait(std::chrono::milliseconds timeout) = 0;
};

// What a backend needs to connect its ranks: this rank and the world's size, a way to receive rank 0's
// connection token (rank 0 passes its own; every rank returns rank 0's), and how long to wait.
struct CollectivesRendezvous {
  int rank = 0, size = 1;
  std::function<std::string(const std::string& rank0_token)> share_token;
  std::chrono::milliseconds timeout{30000};
};

}  // namespace mpx::backend
