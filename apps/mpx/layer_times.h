// The per-layer times of `mpx bench train --profile` and `mpx bench gpt --profile`: as JSON (mean
// milliseconds per call) and as the indented lines the plain output prints.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mpx/nn/layer.h"

namespace mpx::cli {

inline nlohmann::json layer_times_json(const std::vector<nn::LayerTime>& times) {
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& t : times) {
    const double calls = static_cast<double>(std::max<std::int64_t>(1, t.calls));
    layers.push_back({{"layer", t.name}, {"forward_ms", t.forward_seconds / calls * 1e3},
                      {"backward_ms", t.backward_seconds / calls * 1e3}});
  }
  return layers;
}

inline void print_layer_times(const nlohmann::json& layers, int indent, int name_width) {
  for (const auto& l : layers) {
    fmt::print("{:{}}{:<{}} forward {:7.3f} ms  backward {:7.3f} ms\n", "", indent, l["layer"].get<std::string>(),
               name_width, l["forward_ms"].get<double>(), l["backward_ms"].get<double>());
  }
}

}  // namespace mpx::cli
