// Error kinds, their exit codes and the one message shape used across optima.
#include "optima/core/error.h"

namespace optima {

int exit_code_for(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kUsage: return kExitUsage;
    case ErrorKind::kInput: return kExitInput;
    case ErrorKind::kIo: return kExitIo;
    case ErrorKind::kNumeric: return kExitNumeric;
    case ErrorKind::kInterrupted: return kExitInterrupted;
    case ErrorKind::kSuspended: return kExitSuspended;
    case ErrorKind::kInternal: return kExitInternal;
  }
  return kExitInternal;
}

std::string_view to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kUsage: return "usage error";
    case ErrorKind::kInput: return "input error";
    case ErrorKind::kIo: return "I/O error";
    case ErrorKind::kNumeric: return "numeric error";
    case ErrorKind::kInterrupted: return "interrupted";
    case ErrorKind::kSuspended: return "interrupted, resumable";
    case ErrorKind::kInternal: return "internal error";
  }
  return "error";
}

std::string describe(std::string_view where, std::string_view what, std::string_view expected, std::string_view found) {
  std::string message;
  if (!where.empty()) message = fmt::format("{}: ", where);
  message += what;
  if (!expected.empty() || !found.empty()) message += fmt::format(" (expected {}, found {})", expected, found);
  return message;
}

}  // namespace optima
