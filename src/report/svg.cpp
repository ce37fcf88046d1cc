#include "svg.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace mpx::report::svg {

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {
std::string tick_label(double v) {
  if (v != 0 && (std::fabs(v) >= 1e5 || std::fabs(v) < 1e-3)) return fmt::format("{:.1e}", v);
  return fmt::format("{:.4g}", v);
}
}  // namespace

std::string line_chart(const Axes& a, const std::vector<Series>& series) {
  const double left = 64, right = 16, top = 28, bottom = 40;
  const double w = a.width - left - right, h = a.height - top - bottom;
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  auto ty = [&](double y) { return a.log2_y ? std::log2(std::max(y, 1e-30)) : y; };
  for (const Series& s : series) {
    for (auto [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      x0 = std::min(x0, x);
      x1 = std::max(x1, x);
      y0 = std::min(y0, ty(y));
      y1 = std::max(y1, ty(y));
    }
  }
  std::string out = fmt::format(R"svg(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" role="img">)svg", a.width,
                                a.height);
  out += fmt::format(R"svg(<text x="{}" y="16" font-size="13" font-weight="bold">{}</text>)svg", left, escape(a.title));
  if (!(x0 <= x1)) {
    out += fmt::format(R"svg(<text x="{}" y="{}" font-size="12" fill="#666">no data</text></svg>)svg", left, top + h / 2);
    return out;
  }
  if (x1 == x0) x1 = x0 + 1;
  if (a.log2_y) {  // whole powers of two at the ends
    y0 = std::floor(y0);
    y1 = std::ceil(y1);
  }
  if (y1 == y0) {
    y0 -= 1;
    y1 += 1;
  }
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * w; };
  auto py = [&](double y) { return top + h - (ty(y) - y0) / (y1 - y0) * h; };
  out += fmt::format(R"svg(<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#bbb"/>)svg", left, top, w, h);
  for (int i = 0; i <= 4; ++i) {
    const double v = y0 + (y1 - y0) * i / 4;
    const double y = top + h - h * i / 4;
    out += fmt::format(R"svg(<line x1="{}" x2="{}" y1="{:.1f}" y2="{:.1f}" stroke="#eee"/>)svg", left, left + w, y, y);
    out += fmt::format(R"svg(<text x="{}" y="{:.1f}" font-size="10" text-anchor="end">{}</text>)svg", left - 4, y + 3,
                       a.log2_y ? fmt::format("2^{:.3g}", v) : tick_label(v));
    const double xv = x0 + (x1 - x0) * i / 4;
    out += fmt::format(R"svg(<text x="{:.1f}" y="{}" font-size="10" text-anchor="middle">{}</text>)svg", px(xv),
                       top + h + 14, tick_label(xv));
  }
  out += fmt::format(R"svg(<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text>)svg", left + w / 2,
                     a.height - 6, escape(a.x_label));
  out += fmt::format(R"svg(<text x="12" y="{}" font-size="11" transform="rotate(-90 12 {})" text-anchor="middle">{}</text>)svg",
                     top + h / 2, top + h / 2, escape(a.y_label));
  double legend_x = left + 8;
  for (const Series& s : series) {
    std::string path;
    for (auto [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      if (s.markers) {
        out += fmt::format(R"svg(<circle cx="{:.1f}" cy="{:.1f}" r="3" fill="{}"/>)svg", px(x), py(y), s.color);
      } else {
        path += fmt::format("{}{:.1f},{:.1f}", path.empty() ? "M" : " L", px(x), py(y));
      }
    }
    if (!path.empty()) out += fmt::format(R"svg(<path d="{}" fill="none" stroke="{}" stroke-width="1.5"/>)svg", path, s.color);
    out += fmt::format(R"svg(<rect x="{:.0f}" y="{}" width="10" height="10" fill="{}"/>)svg", legend_x, top + 4, s.color);
    out += fmt::format(R"svg(<text x="{:.0f}" y="{}" font-size="11">{}</text>)svg", legend_x + 14, top + 13, escape(s.label));
    legend_x += 24 + 7.0 * static_cast<double>(s.label.size());
  }
  return out + "</svg>";
}

std::string exponent_histogram(const std::string& title, const std::vector<std::pair<int, double>>& bars, int width,
                               int height) {
  const int lo = -48, hi = 47;  // the telemetry's binade range
  const double left = 6, top = 18, h = height - top - 16, w = width - 2 * left;
  const double bar = w / (hi - lo + 1);
  double peak = 0;
  for (auto [b, n] : bars) peak = std::max(peak, n);
  auto x_of = [&](int b) { return left + (b - lo) * bar; };
  std::string out =
      fmt::format(R"svg(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" role="img">)svg", width, height);
  out += fmt::format(R"svg(<text x="{}" y="12" font-size="11">{}</text>)svg", left, escape(title));
  out += fmt::format(R"svg(<rect x="{:.1f}" y="{}" width="{:.1f}" height="{:.1f}" fill="#fdf2d0"/>)svg", x_of(-24), top,
                     x_of(-14) - x_of(-24), h);
  out += fmt::format(R"svg(<rect x="{:.1f}" y="{}" width="{:.1f}" height="{:.1f}" fill="#e3f1e0"/>)svg", x_of(-14), top,
                     x_of(16) - x_of(-14), h);
  for (auto [b, n] : bars) {
    if (n <= 0 || b < lo || b > hi) continue;
    const double bh = std::max(1.0, h * std::log1p(n) / std::log1p(peak));  // log counts: tails stay visible
    out += fmt::format(R"svg(<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="#3465a4"><title>2^{}: {}</title></rect>)svg",
                       x_of(b), top + h - bh, std::max(1.0, bar - 0.5), bh, b, n);
  }
  for (int b : {-40, -24, -14, 0, 15, 40}) {
    out += fmt::format(R"svg(<text x="{:.1f}" y="{}" font-size="9" text-anchor="middle">{}</text>)svg", x_of(b) + bar / 2,
                       height - 3, b == 0 ? std::string("1") : fmt::format("2^{}", b));
  }
  return out + "</svg>";
}

}  // namespace mpx::report::svg
