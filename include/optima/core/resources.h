// Resource measurements for reports and benchmarks.
#pragma once

#include <cstdint>

namespace optima {

// Peak resident set size of this process so far, in bytes (getrusage).
int64_t peak_rss_bytes();

}  // namespace optima
