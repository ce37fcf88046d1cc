// Service-level objectives of the low-precision traffic and the windows they are judged in:
// `--slo p99_ms=2,agreement=0.995,nonfinite=0 --slo-window 30s`. A window breaches when any objective it
// has data for is missed: the P99 of server-side latency above p99_ms, the shadow's top-1 agreement below
// `agreement`, or more non-finite outputs than `nonfinite`. A window without data for an objective does not
// breach it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mpx::serve {

struct SloSpec {
  std::optional<double> p99_ms;
  std::optional<double> agreement;         // 0-1
  std::optional<std::int64_t> nonfinite;   // outputs (images) per window
  bool empty() const { return !p99_ms && !agreement && !nonfinite; }
};

// Parses "p99_ms=2,agreement=0.995,nonfinite=0"; throws InvalidArgument naming the bad part.
SloSpec parse_slo(const std::string& text);
// Parses a duration: "30s", "500ms", "2m", or plain seconds. Throws InvalidArgument naming `flag`.
double parse_duration_seconds(const std::string& text, const std::string& flag);

// What one window saw of the watched variant.
struct WindowStats {
  std::vector<double> latencies_seconds;  // one per answered request
  std::int64_t requests = 0, nonfinite_outputs = 0, compared = 0, agreed = 0;
};

struct WindowVerdict {
  bool breached = false;
  std::optional<double> p99_ms, agreement;
  std::int64_t requests = 0, nonfinite = 0, compared = 0;
  std::vector<std::string> reasons;  // e.g. "agreement 0.91 < 0.995"
  std::vector<std::string> breached_objectives;  // "p99_ms", "agreement", "nonfinite"
};

// The nearest-rank P99 of the window's latencies, and the verdict against `spec`.
WindowVerdict judge_window(WindowStats stats, const SloSpec& spec);

}  // namespace mpx::serve
