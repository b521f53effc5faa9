// Errors raised by the optima library.
//
// Every failure the user can cause or fix is an optima::Error with a kind; the CLI maps kinds to distinct exit
// codes. Messages follow one shape so they can be read at a glance and grepped in logs:
//   "<where>: <what> (expected <expected>, found <found>)"
// where <where> names the file, and the key or tensor inside it.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <string_view>

namespace optima {

enum class ErrorKind {
  kUsage,        // bad command line or settings (sparsity out of range, unknown flag value)
  kInput,        // a model, data or tokenizer file is missing, malformed or inconsistent
  kIo,           // the operating system refused: cannot write, disk full, permission denied
  kNumeric,      // non-finite values, a factorization that cannot be rescued
  kInterrupted,  // the user or the scheduler asked the run to stop, before anything could be saved
  kSuspended,    // stopped the same way after saving a state that --resume continues
  kInternal,     // a bug in optima
};

// Process exit codes, one per error kind. Scripts (sweeps, SLURM wrappers) rely on these being stable.
inline constexpr int kExitOk = 0;
inline constexpr int kExitInternal = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitInput = 3;
inline constexpr int kExitIo = 4;
inline constexpr int kExitNumeric = 5;
inline constexpr int kExitInterrupted = 130;
inline constexpr int kExitSuspended = 75;  // EX_TEMPFAIL: try again (with --resume); a requeue script's cue

int exit_code_for(ErrorKind kind);
std::string_view to_string(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// Builds "<where>: <what>" and, when both are given, " (expected <expected>, found <found>)".
std::string describe(std::string_view where, std::string_view what, std::string_view expected = {},
                     std::string_view found = {});

[[noreturn]] inline void fail(ErrorKind kind, std::string_view where, std::string_view what,
                              std::string_view expected = {}, std::string_view found = {}) {
  throw Error(kind, describe(where, what, expected, found));
}

[[noreturn]] inline void fail_input(std::string_view where, std::string_view what, std::string_view expected = {},
                                    std::string_view found = {}) {
  fail(ErrorKind::kInput, where, what, expected, found);
}

[[noreturn]] inline void fail_usage(std::string_view what) {
  throw Error(ErrorKind::kUsage, std::string(what));
}

}  // namespace optima

// Checks an invariant of optima itself (not of user input); a failure is a bug.
#define OPTIMA_ASSERT(cond)                                                                                    \
  do {                                                                                                         \
    if (!(cond))                                                                                               \
      throw ::optima::Error(::optima::ErrorKind::kInternal,                                                    \
                            ::fmt::format("internal error at {}:{}: {} is false", __FILE__, __LINE__, #cond)); \
  } while (0)
