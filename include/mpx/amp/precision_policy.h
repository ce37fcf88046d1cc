// PrecisionPolicy: which dtype each op computes and stores in. Presets follow PyTorch Lightning's names
// (`32-true`, `16-mixed`, `bf16-mixed`, `16-true`, `bf16-true`; aliases fp32, fp16, bf16). Whatever the
// preset, loss, softmax, normalisation statistics and optimizer state are FP32: that is not configurable.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mpx/numeric/dtype.h"

namespace mpx::amp {

struct PrecisionPolicy {
  std::string name;                  // the preset's canonical name, e.g. "bf16-mixed"
  DType compute = DType::f32;        // inputs of matmul and convolution (accumulation is always FP32)
  DType activations = DType::f32;    // storage of activations and their gradients between layers
  bool master_weights = false;       // FP32 master weights, low-precision working copies
  bool loss_scaling = false;         // dynamic loss scaling by default (FP16 presets only)
  // Without master weights, BF16 weights are rounded stochastically after each step (bf16-true); 16-true
  // rounds to nearest, as PyTorch's half parameters do (FP16 keeps 3 more bits).
  bool stochastic_weight_rounding = false;
  // FP32 products may round their inputs to TF32 (10-bit mantissa, FP32 accumulation) on tensor cores, as
  // torch.backends.cuda.matmul.allow_tf32. No preset sets it; only the CUDA engine has TF32.
  bool allow_tf32 = false;
  // Per-layer overrides: layers whose name matches the glob pattern (`*`, `?`) compute in this dtype.
  std::vector<std::pair<std::string, DType>> overrides;

  // Always FP32, whatever the preset: these are the promises the tests hold the engine to.
  static constexpr DType kAccumulate = DType::f32;
  static constexpr DType kLoss = DType::f32;
  static constexpr DType kNormStatistics = DType::f32;
  static constexpr DType kOptimizerState = DType::f32;

  DType compute_for(std::string_view layer_name) const;
  bool is_mixed() const { return master_weights; }

  // Throws InvalidArgument naming the accepted names.
  static PrecisionPolicy preset(std::string_view name);
  static std::vector<std::string> preset_names();
};

// Glob match with `*` (any run) and `?` (one character).
bool glob_match(std::string_view pattern, std::string_view text);

}  // namespace mpx::amp
