// Multi-tensor launches: many parameter tensors cut into equal chunks so that one kernel launch (one
// thread block per chunk) covers all of them, whatever their sizes. The plan is made once per parameter
// list (it does not change between steps) and copied to the device, so a CUDA graph can replay it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace mpx::backend {

struct TensorChunk {
  std::uint32_t tensor = 0;  // index into the tensor list
  std::uint32_t length = 0;  // elements in this chunk (≤ chunk_elements)
  std::uint64_t begin = 0;   // first element, a multiple of chunk_elements
};

// Chunks in tensor order, each tensor's chunks in element order; empty tensors contribute none.
// Throws InvalidArgument if chunk_elements is 0 or not a multiple of 4 (vector loads stay aligned).
std::vector<TensorChunk> plan_chunks(std::span<const std::size_t> tensor_elements, std::uint32_t chunk_elements);

}  // namespace mpx::backend
