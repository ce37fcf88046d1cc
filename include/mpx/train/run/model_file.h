// The trained model as a safetensors file in PyTorch's names and layouts (`conv1.weight` [out, in, kh, kw],
// `fc1.weight` [out, in] with its columns in the order nn.Flatten of NCHW gives, `bn1.running_mean`, ...):
// FP32 weights (the master weights in mixed presets) and BatchNorm statistics, so that
// `safetensors.torch.load_file` + `model.load_state_dict` read it, and a file PyTorch saved loads here.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "mpx/io/safetensors.h"
#include "mpx/nn/gpt.h"
#include "mpx/nn/model.h"
#include "mpx/train/run/pytorch_layout.h"

namespace mpx::train {

// The model file a command was given: `path` itself, or a run directory's model.safetensors.
std::string model_file_in(const std::string& path);

// Writes `model` (planned) to `path` atomically with `metadata` (plus "format": "pt" and the layout key).
// A serving copy in FP16/BF16/FP8 is made from it with `mpx convert`.
void save_model(const std::string& path, nn::Sequential& model, const std::map<std::string, std::string>& metadata);

struct LoadedModel {
  FileLayout layout = FileLayout::pytorch;
  std::string notice;  // non-empty when the file was read in an older layout and converted on the way
};

// Loads the weights and statistics saved by save_model, an `mpx convert` copy of them (narrow floats are
// widened exactly), or a PyTorch state dict saved with safetensors.torch.save_file, into a planned model of
// the same architecture, then refreshes the working copies. Throws IoError naming the tensor and both shapes
// when they differ, or a missing tensor.
// `ctx`: the context the model was planned in (its backend and whether it keeps master weights).
LoadedModel load_model(const std::string& path, nn::Sequential& model, nn::Context& ctx);

// GPT models record their sizes in the file's metadata under this key (JSON: n_layer, n_head, n_embd,
// block_size, vocab_size).
inline constexpr const char* kGptKey = "mpx.gpt";
std::string gpt_metadata(const nn::GptConfig& config);
// The GPT sizes of a model file: its kGptKey metadata, or for a Hugging Face GPT-2 file (no mpx metadata)
// the shapes of its tensors (heads of 64). nullopt for a file that holds no GPT. Throws IoError for
// damaged metadata.
std::optional<nn::GptConfig> gpt_config_of(const io::SafetensorsFile& file, const std::string& path);

// The builder ("cnn", "mlp", a GPT preset; "gpt2" for a Hugging Face file) whose parameter names the file holds: its "mpx.model" metadata, or else the
// tensor names (a PyTorch file). Throws InvalidArgument when neither tells.
std::string model_name_of(const io::SafetensorsFile& file, const std::string& path);

}  // namespace mpx::train
