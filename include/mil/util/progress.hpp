#pragma once
// A one-line progress bar for long work: done/total, a bar, rate, ETA and caller-supplied fields
// ("loss 2.31"). Redraws in place on a terminal; on a pipe or log it prints a line every ~10%.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace mil::util {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, FILE* out = stderr)
      : label_(std::move(label)), total_(total), out_(out), tty_(isatty(fileno(out))),
        start_(std::chrono::steady_clock::now()) {}

  // Reports `done` units finished; `fields` is shown after the bar.
  void update(int64_t done, const std::string& fields = {}) {
    double elapsed = seconds();
    bool last = done >= total_;
    if (!tty_) {
      int64_t decile = total_ ? done * 10 / total_ : 10;
      if (decile == last_decile_ && !last) return;
      last_decile_ = decile;
    } else if (!last && elapsed - last_draw_ < 0.1) {
      return;  // at most ten redraws a second
    }
    last_draw_ = elapsed;
    const int width = 28;
    int filled = total_ ? int(width * done / total_) : width;
    std::string bar(size_t(filled), '#');
    bar.resize(size_t(width), '.');
    double eta = done > 0 ? elapsed * double(total_ - done) / double(done) : 0;
    std::fprintf(out_, "%s%s [%s] %lld/%lld %5.1fs eta %5.1fs %s%s", tty_ ? "\r" : "",
                 label_.c_str(), bar.c_str(), (long long)done, (long long)total_, elapsed, eta,
                 fields.c_str(), tty_ && !last ? "\033[K" : "\n");
    std::fflush(out_);
  }
  // A line of its own above the bar (an event during the work); the bar is drawn again by the next
  // update.
  void note(const std::string& text) {
    std::fprintf(out_, "%s%s\n", tty_ ? "\r\033[K" : "", text.c_str());
    std::fflush(out_);
    last_draw_ = -1;
  }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::string label_;
  int64_t total_;
  FILE* out_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  double last_draw_ = -1;
  int64_t last_decile_ = -1;
};

}  // namespace mil::util
