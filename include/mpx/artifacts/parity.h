// `mpx parity`: the FP32 baseline of a saved model against a candidate — the same weights evaluated under
// another precision policy, or another file's weights (e.g. an `mpx convert` FP16 copy) — on the whole
// Fashion-MNIST test set: accuracy and per-class accuracy deltas (the per-slice check), top-1 agreement,
// logit errors and non-finite counts, and whether the deltas are within the gate's thresholds.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "mpx/io/fashion_mnist.h"

namespace mpx::artifacts {

struct ParityOptions {
  std::string checkpoint;          // model.safetensors (FP32), or a run directory holding one
  std::string against;             // optional: the candidate's weights (any float dtype); else `precision`
  std::string precision = "16-mixed";  // the candidate's policy (with `against`: default 32-true)
  std::string model;               // cnn or mlp; empty: from the file's metadata or tensor names
  double max_accuracy_drop = 0.5;  // points
  double max_class_drop = 2.0;     // points, for any one class
  double max_logit_error = -1;     // gate on the largest |candidate - baseline| logit; < 0: no gate
  int batch_size = 500;
};

struct ParityReport {
  std::string baseline, candidate;  // what was compared, in words
  std::int64_t images = 0;
  double baseline_accuracy = 0, candidate_accuracy = 0, accuracy_drop = 0;  // 0-1; drop in points
  std::array<double, 10> baseline_class{}, candidate_class{}, class_drop{};  // accuracy 0-1; drop in points
  double max_class_drop = 0;
  double top1_agreement = 0;  // fraction of images where both predict the same class
  double max_abs_error = 0, mean_abs_error = 0, max_rel_error = 0, mean_rel_error = 0;  // of the logits
  std::uint64_t candidate_nan = 0, candidate_inf = 0;
  bool passed = false;
  std::vector<std::string> notices;  // e.g. a file read in an older layout
  std::vector<std::string> warnings;  // e.g. a baseline that is not FP32
};

ParityReport run_parity(const ParityOptions& options, const io::FashionMnist& data);

}  // namespace mpx::artifacts
