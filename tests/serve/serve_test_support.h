// Model files for the serving tests: a CNN or MLP as training would save it (with its input
// normalisation), and a copy with one layer's weights damaged.
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "mpx/io/safetensors.h"
#include "mpx/nn/model.h"
#include "mpx/train/run/model_file.h"

namespace mpx::test {

// The value of the sample `series` (name with its labels, as the exposition writes them) in Prometheus
// text; -1 if absent.
inline double metric(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return -1;
}

inline std::string serve_temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("mpx_serve_test_" + std::to_string(::getpid()) + "_" + name)).string();
}

// A freshly initialised model saved as `mpx train` saves one, with the normalisation given.
inline std::string write_served_model(const std::string& architecture, std::uint64_t seed, float mean = 0.2860f,
                                      float std_dev = 0.3530f) {
  nn::Context ctx;
  nn::Sequential model = nn::make_model(architecture, seed);
  model.plan({{1, 28, 28, 1}, DType::f32}, ctx);
  const std::string path = serve_temp_path(architecture + "_" + std::to_string(seed) + ".safetensors");
  train::save_model(path, model, {{"mpx.model", architecture}, {"mpx.input_mean", fmt::format("{:.9g}", mean)},
                                  {"mpx.input_std", fmt::format("{:.9g}", std_dev)}});
  return path;
}

// A copy of `path` whose tensor `damaged` is negated (every `stride`-th value of it): the file loads, the
// model answers wrongly.
inline std::string write_damaged_copy(const std::string& path, const std::string& damaged, std::size_t stride = 1) {
  const io::SafetensorsFile file = io::SafetensorsFile::read(path);
  std::vector<std::vector<float>> values;
  std::vector<io::TensorToWrite> tensors;
  values.reserve(file.tensors().size());
  for (const io::SafetensorsEntry& e : file.tensors()) {
    const auto bytes = file.data(e);
    values.emplace_back(bytes.size() / sizeof(float));
    std::memcpy(values.back().data(), bytes.data(), bytes.size());
    if (e.name == damaged) {
      for (std::size_t i = 0; i < values.back().size(); i += stride) values.back()[i] = -values.back()[i];
    }
    tensors.push_back({e.name, e.dtype, e.shape, values.back().data()});
  }
  std::map<std::string, std::string> metadata = file.metadata();
  metadata.erase(io::kDataSha256Key);  // written anew for the damaged data
  const std::string out = serve_temp_path("damaged_" + damaged + ".safetensors");
  io::write_safetensors(out, tensors, metadata);
  return out;
}

// `rows` images of random pixel intensities k/255.
inline std::vector<float> random_images(std::int64_t rows, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> pixel(0, 255);
  std::vector<float> x(static_cast<std::size_t>(rows * 28 * 28));
  for (float& v : x) v = static_cast<float>(pixel(rng)) / 255.0f;
  return x;
}

}  // namespace mpx::test
