// Small inline-SVG charts for the HTML report (internal).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace mpx::report::svg {

struct Series {
  std::string label, color;
  std::vector<std::pair<double, double>> points;  // (x, y), x ascending
  bool markers = false;                           // draw points instead of a line
};

struct Axes {
  std::string title, x_label, y_label;
  bool log2_y = false;  // y axis in powers of two (the loss scale)
  int width = 640, height = 260;
};

std::string line_chart(const Axes& axes, const std::vector<Series>& series);

// Bars per binade (x: binade b for 2^b, y: count), with FP16's normal range [2^-14, 65504] shaded and its
// subnormal range [2^-24, 2^-14) lighter.
std::string exponent_histogram(const std::string& title, const std::vector<std::pair<int, double>>& bars,
                               int width = 300, int height = 120);

std::string escape(const std::string& text);

}  // namespace mpx::report::svg
