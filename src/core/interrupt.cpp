// Signal flag for clean interruption (see interrupt.h).
#include "optima/core/interrupt.h"

#include <atomic>
#include <csignal>
#include <string>

#include "optima/core/error.h"

namespace optima {

namespace {

// Written by the handler, read by the loops: lock-free, as a handler may touch nothing else.
std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void on_interrupt_signal(int signal_number) {
  if (g_signal.exchange(signal_number) != 0) {
    // A second signal: the user insists. Back to the default action, which ends the process.
    std::signal(signal_number, SIG_DFL);
    std::raise(signal_number);
  }
}

}  // namespace

void install_interrupt_handlers() {
  struct sigaction action {};
  action.sa_handler = on_interrupt_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

bool interrupt_requested() {
  return g_signal.load(std::memory_order_relaxed) != 0;
}

int interrupt_signal() {
  return g_signal.load(std::memory_order_relaxed);
}

void check_interrupt(std::string_view where) {
  const int signal_number = g_signal.load(std::memory_order_relaxed);
  if (signal_number != 0) throw_interrupted(signal_number, where);
}

void throw_interrupted(int signal_number, std::string_view where) {
  throw Error(ErrorKind::kInterrupted, fmt::format("stopped by {} at {}; nothing was written under the output name",
                                                   signal_number == SIGTERM  ? "SIGTERM"
                                                   : signal_number == SIGINT ? "SIGINT"
                                                                             : "a signal",
                                                   where));
}

void request_interrupt_for_testing(bool on) {
  g_signal.store(on ? SIGINT : 0);
}

}  // namespace optima
