// Safe conversion of a safetensors checkpoint to FP16, BF16 or FP8: every floating tensor except those
// kept (by default normalisation weights, biases and statistics) is rounded once to nearest-even, and each
// tensor's report says how many values overflowed, underflowed to zero or became subnormal, and the largest
// relative error. Overflow handling: `error` writes nothing when any value overflows; `clamp` saturates to
// the largest finite value; `inf` lets it become infinite (NaN in E4M3, which has no infinity). A source
// holding NaN or Inf is refused (nothing written) unless allowed: they are counted per tensor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mpx/numeric/dtype.h"

namespace mpx::artifacts {

enum class OnOverflow : std::uint8_t { error, clamp, inf };

struct ConvertSpec {
  DType to = DType::f16;
  std::vector<std::string> keep;  // ECMAScript regexes on tensor names; empty: the default list below
  OnOverflow on_overflow = OnOverflow::error;
  // NaN or Inf in the source is a damaged model: nothing is written unless this allows it.
  bool allow_nonfinite = false;
};

// Normalisation weights, biases and running statistics (BatchNorm/LayerNorm names of mpx and PyTorch).
std::vector<std::string> default_keep_patterns();

struct TensorConversion {
  std::string name;
  DType from = DType::f32, to = DType::f32;
  bool converted = false;  // false: kept or not floating, copied unchanged
  std::uint64_t elements = 0, overflowed = 0, underflowed = 0, subnormal = 0;
  std::uint64_t nonfinite = 0;    // NaN or Inf in the source (converted or kept)
  double max_relative_error = 0;  // over finite non-zero inputs with finite results
};

struct ConvertReport {
  std::vector<TensorConversion> tensors;
  TensorConversion total;  // sums (max for the error)
  bool written = false;    // false when on_overflow = error found overflows, or the source holds NaN/Inf
};

// Reads `in`, converts, writes `out` atomically with the source file's SHA-256 and the dtypes in the
// metadata. Throws IoError/InvalidArgument for bad files or arguments.
ConvertReport convert_checkpoint(const std::string& in, const std::string& out, const ConvertSpec& spec);

// Parses "fp16", "bf16", "fp8-e4m3", "fp8-e5m2" (and mpx dtype names) into a narrow dtype; anything else
// is an InvalidArgument naming `flag`.
DType parse_target_dtype(const std::string& text, const std::string& flag = "--to");

}  // namespace mpx::artifacts
