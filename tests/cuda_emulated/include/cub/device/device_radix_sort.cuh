// cub's stable radix sort of (key, value) pairs as the emulated build has it: a stable sort on the keys.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

namespace cub {
struct DeviceRadixSort {
  static cudaError_t SortPairs(void* scratch, std::size_t& bytes, const std::uint32_t* keys_in, std::uint32_t* keys_out,
                               const std::uint32_t* values_in, std::uint32_t* values_out, int count, int begin_bit,
                               int end_bit, cudaStream_t = nullptr) {
    if (scratch == nullptr) {
      bytes = 16;
      return cudaSuccess;
    }
    emulated::enqueue([=] {
      const std::uint32_t mask = (end_bit >= 32 ? ~0u : (1u << end_bit) - 1u) & ~((1u << begin_bit) - 1u);
      std::vector<std::pair<std::uint32_t, std::uint32_t>> pairs(static_cast<std::size_t>(count));
      for (int i = 0; i < count; ++i) pairs[i] = {keys_in[i], values_in[i]};
      std::stable_sort(pairs.begin(), pairs.end(),
                       [mask](const auto& a, const auto& b) { return (a.first & mask) < (b.first & mask); });
      for (int i = 0; i < count; ++i) {
        keys_out[i] = pairs[i].first;
        values_out[i] = pairs[i].second;
      }
    });
    return cudaSuccess;
  }
};
}  // namespace cub
