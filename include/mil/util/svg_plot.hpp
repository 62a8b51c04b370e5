#pragma once
// Writes line plots (e.g. a loss curve) as a self-contained SVG file: no plotting dependency, and
// any browser or image viewer shows it.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "../core/error.hpp"

namespace mil::util {

struct Series {
  std::string name;
  std::vector<double> y;  // x is the index (step)
  std::string color = "#1f77b4";
};

inline void write_svg_plot(const std::string& path, const std::string& title,
                           const std::string& x_label, const std::string& y_label,
                           const std::vector<Series>& series) {
  const double W = 640, H = 400, L = 64, R = 16, T = 36, B = 48;
  double ymin = INFINITY, ymax = -INFINITY;
  size_t n = 0;
  for (const auto& s : series) {
    n = std::max(n, s.y.size());
    for (double v : s.y)
      if (std::isfinite(v)) ymin = std::min(ymin, v), ymax = std::max(ymax, v);
  }
  MIL_CHECK(n >= 1 && std::isfinite(ymin), "plot '", title, "': no finite data");
  if (ymax - ymin < 1e-12) ymax = ymin + 1;
  double pad = 0.05 * (ymax - ymin);
  ymin -= pad, ymax += pad;
  auto px = [&](double i) { return L + (W - L - R) * (n > 1 ? i / double(n - 1) : 0.5); };
  auto py = [&](double v) { return T + (H - T - B) * (1 - (v - ymin) / (ymax - ymin)); };

  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    MIL_CHECK(f.good(), "cannot write plot file '", path, "'");
    char buf[256];
    f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
      << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
    f << "<text x='" << W / 2 << "' y='20' text-anchor='middle' font-size='14'>" << title << "</text>\n";
    for (int k = 0; k <= 4; ++k) {  // horizontal grid with y tick labels
      double v = ymin + (ymax - ymin) * k / 4;
      std::snprintf(buf, sizeof buf,
                    "<line x1='%g' y1='%.1f' x2='%g' y2='%.1f' stroke='#ddd'/><text x='%g' y='%.1f' "
                    "text-anchor='end'>%.3g</text>\n",
                    L, py(v), W - R, py(v), L - 6, py(v) + 4, v);
      f << buf;
    }
    for (int k = 0; k <= 4; ++k) {  // x tick labels
      double i = double(n - 1) * k / 4;
      std::snprintf(buf, sizeof buf, "<text x='%.1f' y='%g' text-anchor='middle'>%.0f</text>\n", px(i),
                    H - B + 16, i);
      f << buf;
    }
    f << "<text x='" << (L + W - R) / 2 << "' y='" << H - 10 << "' text-anchor='middle'>" << x_label
      << "</text>\n<text transform='translate(16," << (T + H - B) / 2
      << ") rotate(-90)' text-anchor='middle'>" << y_label << "</text>\n";
    double legend_y = T + 14;
    for (const auto& s : series) {
      f << "<polyline fill='none' stroke='" << s.color << "' stroke-width='1.5' points='";
      for (size_t i = 0; i < s.y.size(); ++i)
        if (std::isfinite(s.y[i])) {
          std::snprintf(buf, sizeof buf, "%.1f,%.1f ", px(double(i)), py(s.y[i]));
          f << buf;
        }
      f << "'/>\n<text x='" << W - R - 8 << "' y='" << legend_y << "' text-anchor='end' fill='"
        << s.color << "'>" << s.name << "</text>\n";
      legend_y += 16;
    }
    f << "</svg>\n";
    MIL_CHECK(f.good(), "error writing plot file '", tmp, "'");
  }
  MIL_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '", tmp, "' to '", path, "'");
}

}  // namespace mil::util
