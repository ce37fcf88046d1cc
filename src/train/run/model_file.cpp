#include "mpx/train/run/model_file.h"

#include <array>

#include "mpx/core/error.h"
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
  FileOrder order(model);  // holds the reordered copies until the file is written
  std::vector<io::TensorToWrite> tensors;
  for (const auto& [tensor_name, t] : named_tensors(model)) {
    if (!t->defined()) throw InvalidArgument("save_model: the model is not planned yet");
    tensors.push_back({tensor_name, t->dtype(), t->shape(), order.for_writing(tensor_name, *t)});
  }
  std::map<std::string, std::string> m = metadata;
  m.emplace("format", "pt");  // what safetensors.torch writes: PyTorch tensors
  m[kLayoutKey] = kPytorchLayout;
  io::write_safetensors(path, tensors, m);
}

LoadedModel load_model(const std::string& path, nn::Sequential& model, nn::Context& ctx) {
  const io::SafetensorsFile file = io::SafetensorsFile::read(path);
  LoadedModel loaded;
  loaded.layout = file_layout(file.metadata(), path);
  const FileOrder order(model);
  std::vector<float> staging;
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
    staging.resize(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) staging[i] = static_cast<float>(values[i]);
    order.read_into(tensor_name, staging.data(), loaded.layout, *t);
  }
  if (loaded.layout == FileLayout::mpx_nhwc && order.reorders_anything()) {
    loaded.notice = path + " was written by an earlier mpx (no " + kLayoutKey + " in its metadata) with " + order.first_reordered() +
                    "'s columns in NHWC order (PyTorch would misread it); read in that order here. Retrain, or "
                    "load and save it with this mpx, for a file PyTorch reads";
  }
  for (const auto& layer : model.layers()) {
    for (nn::Parameter* p : layer->parameters()) p->refresh(ctx.backend(), ctx.policy.master_weights);
  }
  return loaded;
}

std::string model_name_of(const io::SafetensorsFile& file, const std::string& path) {
  if (const auto it = file.metadata().find("mpx.model"); it != file.metadata().end()) return it->second;
  for (const char* candidate : std::array{"cnn", "mlp"}) {
    nn::Sequential model = nn::make_model(candidate, 0);
    bool all_present = true;
    for (const nn::Parameter* p : model.parameters()) all_present = all_present && file.find(p->name) != nullptr;
    if (all_present && file.tensors().size() >= model.parameters().size()) return candidate;
  }
  throw InvalidArgument(path + " does not say which model it holds and its tensor names match none; pass --model");
}

}  // namespace mpx::train
