// Clean interruption: SIGINT and SIGTERM (Ctrl-C, SLURM's preemption or time-limit warning) set a flag that long
// loops poll at safe points; they then throw an Error of kind kInterrupted, so that staged outputs are removed by
// their destructors and the process exits with code 130 instead of dying mid-write. A second signal ends the
// process at once (the default action).
#pragma once

#include <string_view>

namespace optima {

// Installs the handlers (the CLI does, once, at start-up; the library never does).
void install_interrupt_handlers();

// True once a SIGINT or SIGTERM arrived.
bool interrupt_requested();

// The signal that arrived (SIGINT or SIGTERM), or 0. A job of many processes exchanges it so that every process
// stops at the same point.
int interrupt_signal();

// Throws Error(kInterrupted) naming `where` (e.g. "block 3, before mlp.down_proj") once a signal arrived.
void check_interrupt(std::string_view where);
// Throws Error(kInterrupted) for `signal_number` at `where`, as check_interrupt does.
[[noreturn]] void throw_interrupted(int signal_number, std::string_view where);

// Tests: raise or clear the flag without a signal.
void request_interrupt_for_testing(bool on);

}  // namespace optima
