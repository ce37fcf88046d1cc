#include "mpx/backend/multi_tensor.h"

#include <algorithm>
#include <limits>
#include <string>

#include "mpx/core/error.h"

namespace mpx::backend {

std::vector<TensorChunk> plan_chunks(std::span<const std::size_t> tensor_elements, std::uint32_t chunk_elements) {
  if (chunk_elements == 0 || chunk_elements % 4 != 0) {
    throw InvalidArgument("plan_chunks: chunk size must be a positive multiple of 4, got " +
                          std::to_string(chunk_elements));
  }
  if (tensor_elements.size() > std::numeric_limits<std::uint32_t>::max()) {
    throw InvalidArgument("plan_chunks: too many tensors (" + std::to_string(tensor_elements.size()) + ")");
  }
  std::vector<TensorChunk> chunks;
  for (std::size_t t = 0; t < tensor_elements.size(); ++t) {
    for (std::uint64_t begin = 0; begin < tensor_elements[t]; begin += chunk_elements) {
      const auto length = static_cast<std::uint32_t>(std::min<std::uint64_t>(chunk_elements, tensor_elements[t] - begin));
      chunks.push_back({static_cast<std::uint32_t>(t), length, begin});
    }
  }
  return chunks;
}

}  // namespace mpx::backend
