// Applies the thread choice of threads.h to LibTorch; the one part of core/ that needs it.
#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

#include "optima/core/threads.h"

namespace optima {

void apply_threads(const ThreadChoice& choice) {
  at::set_num_threads(choice.threads);
  // optima runs no concurrent graph work; one inter-op thread is all it uses. The call fails once the inter-op
  // pool exists (a second run in the same process), which is harmless.
  try {
    at::set_num_interop_threads(1);
  } catch (const std::exception&) {
  }
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  const char* spin = std::getenv("GOMP_SPINCOUNT");
  spdlog::info("{} thread{} ({}); OpenMP wait policy {}", choice.threads, choice.threads == 1 ? "" : "s", choice.rule,
               policy == nullptr ? "the runtime's default"
               : passive_wait_set_by_optima()
                   ? fmt::format("PASSIVE after {} spins (optima's default; set OMP_WAIT_POLICY to change it)",
                                 spin != nullptr ? spin : "0")
                   : fmt::format("{} (OMP_WAIT_POLICY)", policy));
}

SerialScope::SerialScope(bool serial) {
  if (!serial || at::get_num_threads() == 1) return;
  previous_threads_ = at::get_num_threads();
  at::set_num_threads(1);
}

SerialScope::~SerialScope() {
  if (previous_threads_ > 0) at::set_num_threads(previous_threads_);
}

}  // namespace optima
