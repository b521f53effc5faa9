// Progress reporting for long work. The library emits events; a sink renders them: one redrawn line on a
// terminal, or plain log lines (at most one every few seconds) when output goes to a file, as under SLURM.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

namespace optima {

struct ProgressEvent {
  std::string stage;   // e.g. "block 3/12", "eval"
  int64_t done = 0;    // units finished in this stage
  int64_t total = 0;   // 0 when unknown
  std::string detail;  // free text, e.g. "fc1: sparsity 0.500"
};

class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  virtual void update(const ProgressEvent& event) = 0;
  // Ends the current line (terminal) or logs the last state.
  virtual void finish() = 0;
};

// A sink that drops everything (tests, --quiet).
std::unique_ptr<ProgressSink> make_null_progress();
// Redraws one line on `stream` when it is a terminal, else logs through spdlog at most every `interval`.
std::unique_ptr<ProgressSink> make_console_progress(std::FILE* stream = stderr,
                                                    std::chrono::seconds interval = std::chrono::seconds(10));

}  // namespace optima
