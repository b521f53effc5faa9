// Parallel loops for optima's own compiled kernels (see parallel.h).
#include "optima/core/parallel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>
#include <vector>

namespace optima {

namespace {
// Pieces per thread: enough for one thread to take over another's work, few enough that taking one costs nothing.
constexpr int64_t kPiecesPerThread = 8;
}  // namespace

void parallel_ranges(int64_t count, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (count <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t threads = std::clamp<int64_t>(count / grain, 1, at::get_num_threads());
  if (threads == 1) {
    fn(0, count);
    return;
  }
  // Pieces handed out in turn rather than one fixed share per thread: on a shared machine a thread the scheduler
  // holds back would otherwise hold up the others until it has done its share.
  const int64_t piece = std::max(grain, count / (threads * kPiecesPerThread));
  std::atomic<int64_t> next{0};
  std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
  auto work = [&](int64_t t) {
    try {
      for (int64_t begin = next.fetch_add(piece); begin < count; begin = next.fetch_add(piece))
        fn(begin, std::min(count, begin + piece));
    } catch (...) {
      errors[static_cast<size_t>(t)] = std::current_exception();
      next.store(count);  // the others stop at their next piece
    }
  };
  std::vector<std::thread> helpers;
  helpers.reserve(static_cast<size_t>(threads - 1));
  for (int64_t t = 1; t < threads; ++t) helpers.emplace_back(work, t);
  work(0);
  for (std::thread& h : helpers) h.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace optima
