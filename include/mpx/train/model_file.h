// The trained model as a safetensors file in PyTorch's names and layouts (`conv1.weight` [out, in, kh, kw],
// `fc1.weight` [out, in], `bn1.running_mean`, ...): FP32 weights (the master weights in mixed presets) and
// BatchNorm statistics, so that `safetensors.torch.load_file` and `model.load_state_dict` read it.
#pragma once

#include <map>
#include <string>

#include "mpx/nn/model.h"

namespace mpx::train {

// Writes `model` (planned) to `path` atomically with `metadata`. A serving copy in FP16/BF16/FP8 is made
// from it with `mpx convert`.
void save_model(const std::string& path, nn::Sequential& model, const std::map<std::string, std::string>& metadata);

// Loads the weights and statistics saved by save_model (or an `mpx convert` copy of them: narrow floats are
// widened exactly) into a planned model of the same architecture, then refreshes the working copies.
// Throws IoError naming the tensor and both shapes when they differ, or a missing tensor.
void load_model(const std::string& path, nn::Sequential& model, bool master_weights);

}  // namespace mpx::train
