#include "mpx/report/html_report.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mpx/core/error.h"
#include "mpx/io/regular_file.h"
#include "mpx/train/run/run_files.h"
#include "svg.h"

namespace mpx::report {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json read_json_file(const fs::path& path) {
  if (fs::exists(path)) io::require_regular_file(path.string(), "JSON file");
  std::ifstream in(path);
  if (!in) throw IoError("cannot read " + path.string() + ": missing or unreadable (is this a run directory?)");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw IoError("damaged " + path.string() + ": " + e.what());
  }
}

std::vector<json> read_jsonl(const fs::path& path) {
  if (fs::exists(path)) io::require_regular_file(path.string(), "JSON-lines file");
  std::ifstream in(path);
  if (!in) throw IoError("cannot read " + path.string() + ": missing or unreadable (is this a run directory?)");
  std::vector<json> records;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    try {
      records.push_back(json::parse(line));
    } catch (const json::exception& e) {
      throw IoError(fmt::format("damaged {} at line {}: {}", path.string(), number, e.what()));
    }
  }
  return records;
}

// A JSON number, or the strings metrics use for non-finite values.
double number(const json& v) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "Infinity") return INFINITY;
    if (s == "-Infinity") return -INFINITY;
    if (s == "NaN") return NAN;
  }
  return NAN;
}

std::string cell(double v, const char* format = "{:.2f}") {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "∞" : "−∞";
  return fmt::format(fmt::runtime(format), v);
}

std::string field(const json& j, const char* key) {
  if (!j.contains(key)) return "—";
  const json& v = j.at(key);
  return svg::escape(v.is_string() ? v.get<std::string>() : v.dump());
}

}  // namespace

std::string render_run_report(const std::string& run_dir) {
  const fs::path dir(run_dir);
  if (!fs::is_directory(dir)) throw IoError("no run directory " + run_dir + " (expected runs/NAME from mpx train)");
  const json summary = read_json_file(dir / "summary.json");
  const json config = fs::exists(dir / "config.json") ? read_json_file(dir / "config.json") : json::object();
  const std::vector<json> records = read_jsonl(dir / "metrics.jsonl");

  svg::Series loss{"train loss", "#3465a4", {}}, accuracy{"test accuracy (%)", "#4e9a06", {}, true};
  svg::Series scale{"loss scale", "#75507b", {}}, skipped{"skipped step", "#cc0000", {}, true};
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> nonfinite;  // layer -> (nan, inf) over samples
  std::vector<std::string> layer_order;
  const json* last_sample = nullptr;
  std::vector<const json*> origins;
  double steps_per_epoch = 0;
  for (const json& r : records) {
    const std::string type = r.value("type", "");
    if (type == "step") {
      const double step = number(r.at("step"));
      loss.points.emplace_back(step, number(r.at("loss")));
      scale.points.emplace_back(step, number(r.at("loss_scale")));
      if (r.value("skipped", false)) skipped.points.emplace_back(step, number(r.at("loss_scale")));
      if (r.contains("epoch") && number(r.at("epoch")) == 1) steps_per_epoch = std::max(steps_per_epoch, step);
    } else if (type == "epoch") {
      accuracy.points.emplace_back(number(r.at("epoch")), 100 * number(r.at("test_accuracy")));
    } else if (type == "numerics") {
      last_sample = &r;
      for (const json& t : r.at("tensors")) {
        const std::string layer = t.at("layer");
        if (!nonfinite.count(layer)) layer_order.push_back(layer);
        auto& [nan, inf] = nonfinite[layer];
        nan += t.at("nan").get<std::uint64_t>();
        inf += t.at("pos_inf").get<std::uint64_t>() + t.at("neg_inf").get<std::uint64_t>();
      }
    } else if (type == "nonfinite") {
      origins.push_back(&r);
    }
  }

  std::string html = R"(<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>mpx run report</title>
<style>body{font-family:sans-serif;margin:24px;max-width:1000px;color:#222}h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}.advice{background:#fff8e0;padding:10px;border-left:4px solid #e0a000}.grid{display:flex;flex-wrap:wrap;gap:8px}
.bad{color:#c00;font-weight:bold}.muted{color:#666;font-size:12px}</style></head><body>)";
  html += fmt::format("<h1>mpx run report: {}</h1>", svg::escape(dir.filename().string().empty()
                                                                       ? dir.parent_path().filename().string()
                                                                       : dir.filename().string()));
  html += "<table><tr><th>model</th><th>precision</th><th>epochs</th><th>test accuracy</th><th>train seconds</th>"
          "<th>img/s</th><th>peak bytes</th><th>skipped steps</th><th>final loss scale</th></tr>";
  const double peak = summary.contains("peak_bytes") ? number(summary["peak_bytes"].value("total", json(NAN))) : NAN;
  html += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}%</td><td>{}</td><td>{}</td><td>{} MiB</td><td>{}</td>"
                      "<td>{}</td></tr></table>",
                      field(summary, "model"), field(summary, "precision"), field(summary, "epochs"),
                      cell(100 * number(summary.value("test_accuracy", json(NAN)))),
                      cell(number(summary.value("train_seconds", json(NAN))), "{:.1f}"),
                      cell(number(summary.value("images_per_second", json(NAN))), "{:.0f}"), cell(peak / 1048576.0, "{:.1f}"),
                      field(summary, "skipped_steps"), field(summary, "final_loss_scale"));
  if (summary.value("status", "") == "diverged") {
    html += "<p class=advice>The run stopped: " + svg::escape(summary.value("error", std::string("diverged"))) + "</p>";
  }
  html += fmt::format("<p class=muted>config: {}</p>", svg::escape(config.dump()));
  const json numerics = summary.value("numerics", json::object());
  if (numerics.contains("recommendation")) {
    html += "<h2>Recommendation</h2><p class=advice>" + svg::escape(numerics["recommendation"].get<std::string>()) + "</p>";
  }

  html += "<h2>Loss and accuracy</h2><div class=grid>";
  html += svg::line_chart({"training loss", "step", "loss", false, 480, 240}, {loss});
  html += svg::line_chart({"test accuracy after each epoch", "epoch", "%", false, 480, 240}, {accuracy});
  html += "</div><h2>Loss scale and skipped steps</h2>";
  html += svg::line_chart({"loss scale", "step", "scale", true, 980, 220}, {scale, skipped});
  html += fmt::format("<p>{} skipped steps; {} steps went non-finite.</p>", field(summary, "skipped_steps"),
                      numerics.contains("nonfinite_steps") ? numerics["nonfinite_steps"].dump() : "—");
  if (!origins.empty()) {
    html += "<h3>Where non-finite values began</h3><table><tr><th>step</th><th>layer</th><th>pass</th><th>what</th></tr>";
    for (const json* o : origins) {
      html += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", field(*o, "step"), field(*o, "layer"),
                          field(*o, "pass"), field(*o, "description"));
    }
    html += "</table>";
  }

  html += "<h2>Non-finite values per layer (sampled steps)</h2>";
  if (layer_order.empty()) {
    html += "<p class=muted>No numerics samples in metrics.jsonl (run with --numerics-every N).</p>";
  } else {
    html += "<table><tr><th>layer</th><th>NaN</th><th>±inf</th></tr>";
    for (const std::string& layer : layer_order) {
      const auto [nan, inf] = nonfinite[layer];
      html += fmt::format("<tr><td>{}</td><td{}>{}</td><td{}>{}</td></tr>", svg::escape(layer), nan ? " class=bad" : "",
                          nan, inf ? " class=bad" : "", inf);
    }
    html += "</table>";
  }

  if (numerics.contains("headroom") && !numerics["headroom"].empty()) {
    html += "<h2>FP16 headroom (last sample)</h2><table><tr><th>layer</th><th>activation headroom (binades)</th>"
            "<th>gradient headroom (binades, scaled)</th><th>gradients below 2^-14 unscaled</th>"
            "<th>… with the loss scale</th><th>advice</th></tr>";
    for (const json& h : numerics["headroom"]) {
      const std::string advice = h.value("advice", "");
      html += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}%</td><td>{}%</td><td{}>{}</td></tr>",
                          field(h, "layer"), cell(number(h.at("activation_headroom_binades")), "{:.1f}"),
                          cell(number(h.at("gradient_headroom_binades")), "{:.1f}"),
                          cell(100 * number(h.at("gradient_underflow_unscaled"))),
                          cell(100 * number(h.at("gradient_underflow_scaled"))), advice == "keep" ? "" : " class=bad",
                          svg::escape(advice));
    }
    html += "</table>";
  }

  if (last_sample) {
    html += fmt::format("<h2>Exponent histograms, step {} (log counts; green: FP16 normal range, yellow: FP16 "
                        "subnormals)</h2><div class=grid>",
                        last_sample->at("step").dump());
    for (const json& t : last_sample->at("tensors")) {
      const std::string kind = t.at("kind");
      if (kind != "activation" && kind != "activation_grad" && kind != "weight_grad") continue;
      std::vector<std::pair<int, double>> bars;
      for (const auto& [binade, count] : t.at("histogram").at("binades").items()) {
        bars.emplace_back(std::stoi(binade), count.get<double>());
      }
      html += svg::exponent_histogram(t.at("tensor").get<std::string>() + " (" + t.at("dtype").get<std::string>() + ")",
                                      bars);
    }
    html += "</div>";
  }
  html += "<p class=muted>Generated by mpx report from " + svg::escape(run_dir) + ". No scripts, no network.</p>";
  return html + "</body></html>\n";
}

std::string write_run_report(const std::string& run_dir, const std::string& out) {
  const std::string html = render_run_report(run_dir);
  const std::string path = out.empty() ? (fs::path(run_dir) / "report.html").string() : out;
  train::write_text_atomic(path, html);
  return path;
}

}  // namespace mpx::report
