#include "mpx/serve/slo.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "mpx/core/error.h"

namespace mpx::serve {

namespace {

double parse_number(const std::string& text, const std::string& what) {
  try {
    std::size_t used = 0;
    const double value = std::stod(text, &used);
    if (used == text.size() && std::isfinite(value)) return value;
  } catch (const std::exception&) {
  }
  throw InvalidArgument(what + ": '" + text + "' is not a number");
}

}  // namespace

SloSpec parse_slo(const std::string& text) {
  SloSpec spec;
  std::size_t begin = 0;
  while (begin <= text.size()) {
    const std::size_t end = std::min(text.find(',', begin), text.size());
    const std::string part = text.substr(begin, end - begin);
    begin = end + 1;
    if (part.empty()) {
      if (end >= text.size()) break;
      continue;
    }
    const std::size_t eq = part.find('=');
    if (eq == std::string::npos) throw InvalidArgument("--slo '" + part + "': write NAME=VALUE (p99_ms, agreement, nonfinite)");
    const std::string key = part.substr(0, eq);
    const double value = parse_number(part.substr(eq + 1), "--slo " + key);
    if (key == "p99_ms") {
      if (!(value > 0)) throw InvalidArgument("--slo p99_ms must be positive");
      spec.p99_ms = value;
    } else if (key == "agreement") {
      if (value < 0 || value > 1) throw InvalidArgument("--slo agreement is a fraction between 0 and 1");
      spec.agreement = value;
    } else if (key == "nonfinite") {
      if (value < 0 || value != std::floor(value)) throw InvalidArgument("--slo nonfinite is a count, 0 or more");
      spec.nonfinite = static_cast<std::int64_t>(value);
    } else {
      throw InvalidArgument("--slo: unknown objective '" + key + "' (known: p99_ms, agreement, nonfinite)");
    }
  }
  return spec;
}

double parse_duration_seconds(const std::string& text, const std::string& flag) {
  double scale = 1;
  std::string number = text;
  if (text.size() > 2 && text.compare(text.size() - 2, 2, "ms") == 0) {
    scale = 1e-3, number = text.substr(0, text.size() - 2);
  } else if (!text.empty() && text.back() == 's') {
    number = text.substr(0, text.size() - 1);
  } else if (!text.empty() && text.back() == 'm') {
    scale = 60, number = text.substr(0, text.size() - 1);
  }
  const double value = parse_number(number, flag) * scale;
  if (!(value > 0)) throw InvalidArgument(flag + " must be a positive duration such as 30s or 500ms");
  return value;
}

WindowVerdict judge_window(WindowStats stats, const SloSpec& spec) {
  WindowVerdict v;
  v.requests = stats.requests;
  v.nonfinite = stats.nonfinite_outputs;
  v.compared = stats.compared;
  if (!stats.latencies_seconds.empty()) {
    std::vector<double>& l = stats.latencies_seconds;
    // Nearest rank: the smallest latency with at least 99% of the window at or below it.
    const std::size_t rank = static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(l.size()))) - 1;
    std::nth_element(l.begin(), l.begin() + static_cast<std::ptrdiff_t>(rank), l.end());
    v.p99_ms = l[rank] * 1e3;
  }
  if (stats.compared > 0) v.agreement = static_cast<double>(stats.agreed) / static_cast<double>(stats.compared);
  if (spec.p99_ms && v.p99_ms && *v.p99_ms > *spec.p99_ms) {
    v.reasons.push_back(fmt::format("p99 {:.3f} ms > {:g} ms", *v.p99_ms, *spec.p99_ms));
    v.breached_objectives.push_back("p99_ms");
  }
  if (spec.agreement && v.agreement && *v.agreement < *spec.agreement) {
    v.reasons.push_back(fmt::format("agreement {:.4f} < {:g} ({} compared)", *v.agreement, *spec.agreement, stats.compared));
    v.breached_objectives.push_back("agreement");
  }
  if (spec.nonfinite && stats.nonfinite_outputs > *spec.nonfinite) {
    v.reasons.push_back(fmt::format("{} non-finite outputs > {}", stats.nonfinite_outputs, *spec.nonfinite));
    v.breached_objectives.push_back("nonfinite");
  }
  v.breached = !v.reasons.empty();
  return v;
}

}  // namespace mpx::serve
