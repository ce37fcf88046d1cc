#include "mpx/train/run/pytorch_layout.h"

#include <cstring>

#include "mpx/core/error.h"

namespace mpx::train {

FileLayout file_layout(const std::map<std::string, std::string>& metadata, const std::string& path) {
  const auto layout = metadata.find(kLayoutKey);
  if (layout != metadata.end()) {
    if (layout->second == kPytorchLayout) return FileLayout::pytorch;
    throw IoError(path + ": tensor layout '" + layout->second + "' (" + kLayoutKey +
                  ") is not one this mpx reads; use the mpx that wrote it, or a newer one");
  }
  // mpx has always written "mpx.version" (model files) or "mpx.checkpoint" (checkpoints); a converted copy
  // keeps its source's metadata. A file with neither comes from elsewhere (safetensors.torch.save_file).
  const bool written_by_mpx = metadata.count("mpx.version") || metadata.count("mpx.checkpoint") ||
                              metadata.count("mpx.model") || metadata.count("mpx.converted_to");
  return written_by_mpx ? FileLayout::mpx_nhwc : FileLayout::pytorch;
}

void ColumnOrder::memory_to_file(const float* memory, float* file) const {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* src = memory + r * columns;
    float* dst = file + r * columns;
    for (std::int64_t p = 0; p < columns; ++p) dst[p] = src[memory_column[static_cast<std::size_t>(p)]];
  }
}

void ColumnOrder::file_to_memory(const float* file, float* memory) const {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* src = file + r * columns;
    float* dst = memory + r * columns;
    for (std::int64_t p = 0; p < columns; ++p) dst[memory_column[static_cast<std::size_t>(p)]] = src[p];
  }
}

namespace {
// PyTorch's flatten of NCHW visits (c, h, w) with w fastest; mpx's of NHWC visits (h, w, c) with c fastest.
std::vector<std::int64_t> nchw_to_nhwc_columns(std::int64_t height, std::int64_t width, std::int64_t channels) {
  std::vector<std::int64_t> columns;
  columns.reserve(static_cast<std::size_t>(height * width * channels));
  for (std::int64_t c = 0; c < channels; ++c) {
    for (std::int64_t h = 0; h < height; ++h) {
      for (std::int64_t w = 0; w < width; ++w) columns.push_back((h * width + w) * channels + c);
    }
  }
  return columns;
}
}  // namespace

std::map<std::string, ColumnOrder> pytorch_column_orders(const nn::Sequential& model) {
  std::map<std::string, ColumnOrder> orders;
  const auto& layers = model.layers();
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const auto* flatten = dynamic_cast<const nn::Flatten*>(layers[i].get());
    if (!flatten) continue;
    const Shape& in = flatten->input_shape();
    if (in.empty()) throw InvalidArgument("pytorch_column_orders: the model is not planned yet");
    if (in.size() != 4 || in[3] == 1 || in[1] * in[2] == 1) continue;  // the two orders agree
    for (std::size_t j = i + 1; j < layers.size(); ++j) {
      nn::Layer& consumer = *layers[j];
      if (consumer.parameters().empty()) continue;  // elementwise (ReLU, dropout): features keep their order
      auto* linear = dynamic_cast<nn::Linear*>(&consumer);
      if (!linear) {
        throw InvalidArgument("layer '" + consumer.name() + "' (" + consumer.kind() + ") reads the output of '" +
                              flatten->name() +
                              "' in NHWC feature order and has no PyTorch layout; put a Linear right after the Flatten");
      }
      orders[linear->weight().name] = {linear->out_features(), linear->in_features(),
                                       nchw_to_nhwc_columns(in[1], in[2], in[3])};
      break;
    }
  }
  return orders;
}

std::map<std::string, Shape> transposed_in_files(nn::Sequential& model) {
  std::map<std::string, Shape> out;
  nn::visit_layers(model, [&](nn::Layer& layer) {
    auto* linear = dynamic_cast<nn::Linear*>(&layer);
    if (linear && linear->file_layout_transposed() && linear->has_bias()) {
      out[linear->weight().name] = {linear->out_features(), linear->in_features()};
    }
  });
  return out;
}

namespace {
void transpose(const float* src, std::int64_t rows, std::int64_t columns, float* dst) {
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < columns; ++c) dst[c * rows + r] = src[r * columns + c];
  }
}
}  // namespace

Shape FileOrder::file_shape(const std::string& parameter, const Tensor& t) const {
  const auto it = transposed_.find(parameter);
  if (it == transposed_.end() || t.shape() != it->second) return t.shape();
  return {it->second[1], it->second[0]};
}

const void* FileOrder::for_writing(const std::string& parameter, const Tensor& t) {
  if (const auto it = transposed_.find(parameter); it != transposed_.end() && t.shape() == it->second) {
    copies_.emplace_back(static_cast<std::size_t>(t.numel()));
    transpose(t.data_as<float>(), it->second[0], it->second[1], copies_.back().data());
    return copies_.back().data();
  }
  const auto order = orders_.find(parameter);
  if (order == orders_.end()) return t.data();
  copies_.emplace_back(static_cast<std::size_t>(t.numel()));
  order->second.memory_to_file(t.data_as<float>(), copies_.back().data());
  return copies_.back().data();
}

void FileOrder::read_into(const std::string& parameter, const float* values, FileLayout layout, Tensor& t) const {
  if (const auto it = transposed_.find(parameter); it != transposed_.end() && t.shape() == it->second) {
    transpose(values, it->second[1], it->second[0], t.data_as<float>());  // file [in, out] -> memory [out, in]
    return;
  }
  const auto order = orders_.find(parameter);
  if (order != orders_.end() && layout == FileLayout::pytorch) {
    order->second.file_to_memory(values, t.data_as<float>());
  } else {
    std::memcpy(t.data(), values, t.bytes());
  }
}

}  // namespace mpx::train
