// Inside GradientSync: a bucket, and how buckets travel. HostTransport: buckets in host memory, summed by
// the ProcessGroup (Gloo) on a communication thread, in submission order. DeviceTransport: buckets in a
// device's memory, summed by the backend's collectives (NCCL) on their own stream. Both turn a failure
// into CommunicationError naming the rank that stopped answering.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mpx/distributed/gradient_sync.h"

namespace mpx::distributed {

// A run of parameters, contiguous in one buffer, all-reduced as one message.
struct GradientSync::Bucket {
  struct Slice {
    nn::Parameter* parameter;
    std::size_t offset, count;
  };
  std::vector<Slice> slices;
  std::size_t elements = 0;
  std::size_t completing_layer = 0;  // after this layer's backward every slice's gradient is final
  // values, residual and next_residual (error feedback), wire (16-bit modes), nonfinite; reference apart.
  backend::GradientBucket tensors;
  Tensor reference;  // M9: the same gradients all-reduced in FP32 beside (first bucket, 16-bit modes)
  bool measured = false;
  const Tensor& sent() const { return tensors.wire.defined() ? tensors.wire : tensors.values; }
};

class GradientSync::Transport {
 public:
  virtual ~Transport() = default;
  // After `b` is packed: its sent() (and, when measured, its reference) summed over the ranks in place.
  virtual void submit(Bucket& b) = 0;
  // Waits until `count` submitted buckets are done; returns the seconds spent in collectives since the
  // last call. Throws CommunicationError when a collective failed.
  virtual double wait(std::size_t count) = 0;
};

}  // namespace mpx::distributed
