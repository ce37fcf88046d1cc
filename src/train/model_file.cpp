#include "mpx/train/model_file.h"

#include <cstring>

#include "mpx/core/error.h"
#include "mpx/io/safetensors.h"
#include "mpx/io/tensor_values.h"

namespace mpx::train {

namespace {
// Every named FP32 tensor of the model, in model order: parameters (their FP32 values), then buffers.
std::vector<std::pair<std::string, Tensor*>> named_tensors(nn::Sequential& model) {
  std::vector<std::pair<std::string, Tensor*>> out;
  for (const auto& layer : model.layers()) {
    for (nn::Parameter* p : layer->parameters()) out.emplace_back(p->name, &p->value);
    for (auto& b : layer->buffers()) out.push_back(b);
  }
  return out;
}
}  // namespace

void save_model(const std::string& path, nn::Sequential& model, const std::map<std::string, std::string>& metadata) {
  std::vector<io::TensorToWrite> tensors;
  for (const auto& [tensor_name, t] : named_tensors(model)) {
    if (!t->defined()) throw InvalidArgument("save_model: the model is not planned yet");
    tensors.push_back({tensor_name, t->dtype(), t->shape(), t->data()});
  }
  std::map<std::string, std::string> m = metadata;
  m.emplace("format", "pt");  // what safetensors.torch writes: PyTorch tensors
  io::write_safetensors(path, tensors, m);
}

void load_model(const std::string& path, nn::Sequential& model, bool master_weights) {
  const io::SafetensorsFile file = io::SafetensorsFile::read(path);
  for (const auto& [tensor_name, t] : named_tensors(model)) {
    const io::SafetensorsEntry* e = file.find(tensor_name);
    if (!e) throw IoError(path + ": tensor '" + tensor_name + "' is missing (is this a model of the same architecture?)");
    if (e->shape != t->shape() || !traits(e->dtype).is_floating) {
      throw IoError(path + ": tensor '" + tensor_name + "' is " + std::string(name(e->dtype)) + " " +
                    to_string(e->shape) + " in the file but " + std::string(name(t->dtype())) + " " +
                    to_string(t->shape()) + " in the model");
    }
    // FP32 exactly as stored; FP16/BF16/FP8 (a converted serving copy) widened exactly.
    const std::vector<double> values = io::widen_to_double(file.data(*e), e->dtype);
    float* dst = t->data_as<float>();
    for (std::size_t i = 0; i < values.size(); ++i) dst[i] = static_cast<float>(values[i]);
  }
  for (const auto& layer : model.layers()) {
    for (nn::Parameter* p : layer->parameters()) p->refresh(master_weights);
  }
}

}  // namespace mpx::train
