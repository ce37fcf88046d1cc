#include "mpx/amp/precision_policy.h"

#include <algorithm>
#include <cctype>

#include "mpx/core/error.h"

namespace mpx::amp {

bool glob_match(std::string_view pattern, std::string_view text) {
  std::size_t p = 0, t = 0, star = std::string_view::npos, resume = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p;
      ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      resume = t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

DType PrecisionPolicy::compute_for(std::string_view layer_name) const {
  for (auto it = overrides.rbegin(); it != overrides.rend(); ++it) {  // the last matching override wins
    if (glob_match(it->first, layer_name)) return it->second;
  }
  return compute;
}

std::vector<std::string> PrecisionPolicy::preset_names() {
  return {"32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"};
}

PrecisionPolicy PrecisionPolicy::preset(std::string_view text) {
  std::string key(text);
  std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return std::tolower(c); });
  if (key == "fp32" || key == "32" || key == "f32") key = "32-true";
  if (key == "fp16" || key == "16" || key == "f16") key = "16-mixed";
  if (key == "bf16") key = "bf16-mixed";

  PrecisionPolicy p;
  p.name = key;
  if (key == "32-true") return p;
  if (key == "16-mixed") {
    p.compute = p.activations = DType::f16;
    p.master_weights = p.loss_scaling = true;
  } else if (key == "bf16-mixed") {
    p.compute = p.activations = DType::bf16;
    p.master_weights = true;
  } else if (key == "16-true") {
    p.compute = p.activations = DType::f16;
    p.loss_scaling = true;
  } else if (key == "bf16-true") {
    p.compute = p.activations = DType::bf16;
    p.stochastic_weight_rounding = true;
  } else {
    throw InvalidArgument("unknown precision '" + std::string(text) +
                          "'; expected 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true (or fp32, fp16, bf16)");
  }
  return p;
}

}  // namespace mpx::amp
