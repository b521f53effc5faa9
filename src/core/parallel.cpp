// Parallel loops for optima's own compiled kernels (see parallel.h).
#include "optima/core/parallel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <exception>
#include <thread>
#include <vector>

namespace optima {

void parallel_ranges(int64_t count, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (count <= 0) return;
  const int64_t ranges = std::clamp<int64_t>(count / std::max<int64_t>(grain, 1), 1, at::get_num_threads());
  if (ranges == 1) {
    fn(0, count);
    return;
  }
  const int64_t size = (count + ranges - 1) / ranges;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(ranges));
  auto run = [&](int64_t r) {
    try {
      fn(r * size, std::min(count, (r + 1) * size));
    } catch (...) {
      errors[static_cast<size_t>(r)] = std::current_exception();
    }
  };
  std::vector<std::thread> helpers;
  helpers.reserve(static_cast<size_t>(ranges - 1));
  for (int64_t r = 1; r < ranges; ++r) helpers.emplace_back(run, r);
  run(0);
  for (std::thread& t : helpers) t.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace optima
