#include "mpx/train/run/model_file.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <string_view>

#include <nlohmann/json.hpp>

#include "mpx/core/error.h"
#include "mpx/io/tensor_values.h"

namespace mpx::train {

std::string model_file_in(const std::string& path) {
  return std::filesystem::is_directory(path) ? (std::filesystem::path(path) / "model.safetensors").string() : path;
}

namespace {
// Hugging Face's GPT-2 files name tensors with or without the "transformer." prefix (GPT2LMHeadModel or
// GPT2Model): both are read.
const io::SafetensorsEntry* find_tensor(const io::SafetensorsFile& file, const std::string& name) {
  if (const io::SafetensorsEntry* e = file.find(name)) return e;
  constexpr std::string_view prefix = "transformer.";
  if (name.starts_with(prefix)) return file.find(name.substr(prefix.size()));
  return nullptr;
}

bool is_token_table(const std::string& name) { return name == "transformer.wte.weight"; }

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
    tensors.push_back({tensor_name, t->dtype(), order.file_shape(tensor_name, *t), order.for_writing(tensor_name, *t)});
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
    const io::SafetensorsEntry* e = find_tensor(file, tensor_name);
    if (!e) throw IoError(path + ": tensor '" + tensor_name + "' is missing (is this a model of the same architecture?)");
    const Shape expected = order.file_shape(tensor_name, *t);
    // A token table with fewer rows than the model's (GPT-2's 50257 tokens in a table padded to 50304):
    // the extra rows are never a target and stay zero.
    const bool padded_rows = is_token_table(tensor_name) && e->shape.size() == 2 && expected.size() == 2 &&
                             e->shape[1] == expected[1] && e->shape[0] < expected[0];
    if ((e->shape != expected && !padded_rows) || !traits(e->dtype).is_floating) {
      throw IoError(path + ": tensor '" + tensor_name + "' is " + std::string(name(e->dtype)) + " " +
                    to_string(e->shape) + " in the file but " + std::string(name(t->dtype())) + " " +
                    to_string(expected) + " in the model");
    }
    // FP32 exactly as stored; FP16/BF16/FP8 (a converted serving copy) widened exactly.
    const std::vector<double> values = io::widen_to_double(file.data(*e), e->dtype);
    staging.assign(static_cast<std::size_t>(t->numel()), 0.0f);
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

std::string gpt_metadata(const nn::GptConfig& c) {
  return nlohmann::json{{"n_layer", c.n_layer}, {"n_head", c.n_head}, {"n_embd", c.n_embd}, {"block_size", c.block_size},
                        {"vocab_size", c.vocab_size}}
      .dump();
}

std::optional<nn::GptConfig> gpt_config_of(const io::SafetensorsFile& file, const std::string& path) {
  if (const auto it = file.metadata().find(kGptKey); it != file.metadata().end()) {
    try {
      const nlohmann::json j = nlohmann::json::parse(it->second);
      nn::GptConfig c;
      c.n_layer = j.at("n_layer").get<std::int64_t>();
      c.n_head = j.at("n_head").get<std::int64_t>();
      c.n_embd = j.at("n_embd").get<std::int64_t>();
      c.block_size = j.at("block_size").get<std::int64_t>();
      c.vocab_size = j.at("vocab_size").get<std::int64_t>();
      nn::make_gpt(c, 0);  // sizes that fit together
      return c;
    } catch (const std::exception& e) {
      throw IoError(path + ": damaged " + std::string(kGptKey) + " metadata: " + e.what());
    }
  }
  // A Hugging Face GPT-2 file: the sizes from the shapes; GPT-2's heads are 64 wide at every size.
  const io::SafetensorsEntry* wte = find_tensor(file, "transformer.wte.weight");
  const io::SafetensorsEntry* wpe = find_tensor(file, "transformer.wpe.weight");
  if (!wte || !wpe || wte->shape.size() != 2 || wpe->shape.size() != 2) return std::nullopt;
  nn::GptConfig c;
  c.vocab_size = wte->shape[0];
  c.n_embd = wte->shape[1];
  c.block_size = wpe->shape[0];
  c.n_head = std::max<std::int64_t>(1, c.n_embd / 64);
  c.n_layer = 0;
  while (find_tensor(file, "transformer.h." + std::to_string(c.n_layer) + ".ln_1.weight")) ++c.n_layer;
  if (c.n_layer == 0) throw IoError(path + ": a GPT-2 token table but no transformer.h.0 block");
  return c;
}

std::string model_name_of(const io::SafetensorsFile& file, const std::string& path) {
  if (const auto it = file.metadata().find("mpx.model"); it != file.metadata().end()) return it->second;
  if (gpt_config_of(file, path)) return "gpt2";
  for (const char* candidate : std::array{"cnn", "mlp"}) {
    nn::Sequential model = nn::make_model(candidate, 0);
    bool all_present = true;
    for (const nn::Parameter* p : model.parameters()) all_present = all_present && file.find(p->name) != nullptr;
    if (all_present && file.tensors().size() >= model.parameters().size()) return candidate;
  }
  throw InvalidArgument(path + " does not say which model it holds and its tensor names match none; pass --model");
}

}  // namespace mpx::train
