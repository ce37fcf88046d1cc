// Memory accounting by category, with peaks: what `summary.json`'s peak_bytes reports. One tracker per
// engine context; single-threaded use (allocation happens while planning, outside parallel regions).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace mpx {

enum class MemoryCategory : std::uint8_t {
  weights,          // parameters as the forward pass uses them (working copies in mixed precision)
  master_weights,   // FP32 master copies (mixed precision only)
  optimizer_state,  // FP32 moments / momentum
  gradients,        // parameter gradients
  activations,      // layer outputs and their gradients, planned per batch shape
  workspace,        // scratch: converted GEMM inputs, library workspaces
  count,
};

std::string_view name(MemoryCategory category);

class MemoryTracker {
 public:
  void allocated(MemoryCategory category, std::size_t bytes);
  void freed(MemoryCategory category, std::size_t bytes);
  std::size_t current(MemoryCategory category) const { return current_[index(category)]; }
  std::size_t peak(MemoryCategory category) const { return peak_[index(category)]; }
  std::size_t current_total() const { return current_total_; }
  std::size_t peak_total() const { return peak_total_; }

 private:
  static std::size_t index(MemoryCategory c) { return static_cast<std::size_t>(c); }
  static constexpr std::size_t kCount = static_cast<std::size_t>(MemoryCategory::count);
  std::array<std::size_t, kCount> current_{}, peak_{};
  std::size_t current_total_ = 0, peak_total_ = 0;
};

}  // namespace mpx
