// `mpx report`: one self-contained HTML file (inline SVG charts, no scripts, no network) from a run
// directory's config.json, metrics.jsonl and summary.json: loss and accuracy curves, loss scale and skipped
// steps, non-finite counts per layer, exponent histograms, the FP16 headroom table and the recommendation.
#pragma once

#include <string>

namespace mpx::report {

// Reads the run directory (throws IoError naming the missing or damaged file, with the line for
// metrics.jsonl) and returns the HTML.
std::string render_run_report(const std::string& run_dir);

// Writes render_run_report(run_dir) to `out` atomically (default: <run_dir>/report.html); returns the path.
std::string write_run_report(const std::string& run_dir, const std::string& out = "");

}  // namespace mpx::report
