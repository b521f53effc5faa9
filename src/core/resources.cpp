// Peak memory of the process, for reports.
#include "optima/core/resources.h"

#include <sys/resource.h>

namespace optima {

int64_t peak_rss_bytes() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports kilobytes
}

}  // namespace optima
