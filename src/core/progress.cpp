// Progress sinks: a redrawn terminal line or throttled log lines.
#include "optima/core/progress.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

namespace optima {
namespace {

class NullProgress final : public ProgressSink {
 public:
  void update(const ProgressEvent&) override {}
  void finish() override {}
};

std::string render(const ProgressEvent& e, double elapsed_s) {
  std::string line = e.stage;
  if (e.total > 0) {
    const double fraction = static_cast<double>(e.done) / static_cast<double>(e.total);
    line += fmt::format(" {:>3.0f}% ({}/{})", 100.0 * fraction, e.done, e.total);
    if (e.done > 0 && e.done < e.total) line += fmt::format(" eta {:.0f}s", elapsed_s * (1.0 - fraction) / fraction);
  } else if (e.done > 0) {
    line += fmt::format(" {}", e.done);
  }
  if (!e.detail.empty()) line += "  " + e.detail;
  return line;
}

class ConsoleProgress final : public ProgressSink {
 public:
  ConsoleProgress(std::FILE* stream, std::chrono::seconds interval)
      : stream_(stream), tty_(::isatty(::fileno(stream)) != 0), interval_(interval) {}

  void update(const ProgressEvent& event) override {
    const auto now = std::chrono::steady_clock::now();
    if (!started_) {
      start_ = now;
      started_ = true;
    }
    last_ = event;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    if (tty_) {
      // Redraw at most ~10 times a second; always draw the final update.
      if (now - last_draw_ < std::chrono::milliseconds(100) && event.done != event.total) return;
      std::string line = render(event, elapsed);
      if (line.size() > 120) line.resize(120);
      std::fprintf(stream_, "\r\033[K%s", line.c_str());
      std::fflush(stream_);
      drawn_ = true;
    } else {
      if (now - last_draw_ < interval_ && event.done != event.total) return;
      spdlog::info("{}", render(event, elapsed));
    }
    last_draw_ = now;
  }

  void finish() override {
    if (tty_ && drawn_) {
      std::fputc('\n', stream_);
      std::fflush(stream_);
    }
    drawn_ = false;
    started_ = false;
    last_draw_ = {};
  }

 private:
  std::FILE* stream_;
  bool tty_;
  std::chrono::seconds interval_;
  bool started_ = false;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_{}, last_draw_{};
  ProgressEvent last_;
};

}  // namespace

std::unique_ptr<ProgressSink> make_null_progress() {
  return std::make_unique<NullProgress>();
}

std::unique_ptr<ProgressSink> make_console_progress(std::FILE* stream, std::chrono::seconds interval) {
  return std::make_unique<ConsoleProgress>(stream, interval);
}

}  // namespace optima
