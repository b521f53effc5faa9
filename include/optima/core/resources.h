// Resource measurements for reports and benchmarks.
#pragma once

#include <chrono>
#include <cstdint>

namespace optima {

// Peak resident set size of this process so far, in bytes (getrusage).
int64_t peak_rss_bytes();
// Resident set size now: anonymous memory and mapped file pages (/proc/self/status), in bytes; 0 when unknown.
struct ResidentBytes {
  int64_t anonymous = 0;
  int64_t file = 0;
};
ResidentBytes resident_bytes();
// Returns freed heap memory to the kernel (malloc_trim). glibc keeps freed allocations below its mmap threshold
// (which grows to 32 MiB as large tensors come and go) for reuse; between blocks that is memory no one will use.
void release_free_memory();

// Wall seconds since `start` on the steady clock (phase timings in reports).
using SteadyClock = std::chrono::steady_clock;
inline double seconds_since(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

}  // namespace optima
