#include "mpx/telemetry/json.h"

#include <cmath>
#include <string>

namespace mpx::telemetry {

nlohmann::json json_number(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  return value;
}

nlohmann::json to_json(const TensorStats& s) {
  nlohmann::json binades = nlohmann::json::object();
  for (int b = 1; b + 1 < TensorStats::kBuckets; ++b) {
    const std::uint64_t n = s.histogram[static_cast<std::size_t>(b)];
    if (n) binades[std::to_string(TensorStats::kMinBinade + b - 1)] = n;
  }
  return {{"elements", s.elements},
          {"nan", s.nan},
          {"pos_inf", s.pos_inf},
          {"neg_inf", s.neg_inf},
          {"zeros", s.zeros},
          {"subnormals", s.subnormals},
          {"beyond_fp16", s.beyond_fp16},
          {"max_abs", json_number(s.max_abs)},
          {"min", json_number(s.min)},
          {"max", json_number(s.max)},
          {"histogram",
           {{"underflow", s.histogram.front()}, {"overflow", s.histogram.back()}, {"binades", binades}}}};
}

nlohmann::json to_json(const NumericsSample& sample) {
  nlohmann::json tensors = nlohmann::json::array();
  for (const TensorRecord& r : sample.tensors) {
    nlohmann::json t = to_json(r.stats);
    t["tensor"] = r.tensor;
    t["layer"] = r.layer;
    t["kind"] = kind_name(r.kind);
    t["dtype"] = std::string(name(r.dtype));
    tensors.push_back(std::move(t));
  }
  return {{"type", "numerics"}, {"step", sample.step}, {"loss_scale", sample.loss_scale}, {"tensors", tensors}};
}

nlohmann::json to_json(const NonFiniteOrigin& o) {
  return {{"step", o.step},          {"layer", o.layer},         {"pass", o.pass}, {"output", to_json(o.output)},
          {"input", to_json(o.input)}, {"description", o.describe()}};
}

nlohmann::json to_json(const LayerHeadroom& h) {
  return {{"layer", h.layer},
          {"activation_headroom_binades", json_number(h.activation_headroom)},
          {"gradient_headroom_binades", json_number(h.gradient_headroom)},
          {"gradient_underflow_unscaled", h.underflow_unscaled},
          {"gradient_underflow_scaled", h.underflow_scaled},
          {"advice", h.advice}};
}

}  // namespace mpx::telemetry
