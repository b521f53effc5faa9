// Parallel loops for optima's own compiled kernels (attention for small heads, the solver's system gathers).
#pragma once

#include <cstdint>
#include <functional>

namespace optima {

// Runs fn(begin, end) over [0, count) split into contiguous pieces of at least `grain` items, taken in turn by the
// intra-op threads (at::get_num_threads()): the caller and threads of their own, joined before it returns (the first
// exception is rethrown; pieces not yet started are then skipped). Items must be independent of each other. optima's
// sources are compiled without OpenMP, and at::parallel_for is a header template whose parallel branch exists only
// under OpenMP: called from them it runs every item on the caller. `fn` must not call ATen operations (they would start
// parallel regions of their own from these threads).
void parallel_ranges(int64_t count, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace optima
