// Resource measurements for reports and benchmarks.
#pragma once

#include <chrono>
#include <cstdint>

namespace optima {

// Peak resident set size of this process so far, in bytes (getrusage).
int64_t peak_rss_bytes();

// Wall seconds since `start` on the steady clock (phase timings in reports).
using SteadyClock = std::chrono::steady_clock;
inline double seconds_since(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

}  // namespace optima
