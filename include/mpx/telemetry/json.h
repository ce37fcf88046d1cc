// The numerics records as JSON, as metrics.jsonl and summary.json carry them (non-finite numbers as the
// strings "NaN", "Infinity", "-Infinity", never null). Histograms are sparse: {"underflow": n,
// "overflow": n, "binades": {"-3": n, ...}} where binade b counts 2^b <= |x| < 2^(b+1).
#pragma once

#include <nlohmann/json.hpp>

#include "mpx/telemetry/numerics_monitor.h"

namespace mpx::telemetry {

nlohmann::json json_number(double value);
nlohmann::json to_json(const TensorStats& stats);
nlohmann::json to_json(const NumericsSample& sample);  // {"type": "numerics", "step", "loss_scale", "tensors"}
nlohmann::json to_json(const NonFiniteOrigin& origin);
nlohmann::json to_json(const LayerHeadroom& headroom);

}  // namespace mpx::telemetry
