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
// Does nothing after fit_allocator_to_block() chose the small-model settings.
void release_free_memory();
// Fixes glibc's mmap threshold at 256 KiB (unless MALLOC_MMAP_THRESHOLD_ is set): every tensor larger than that
// gets its own mapping, returned to the kernel when freed. With the default, the threshold follows the largest
// freed allocation up to 32 MiB, and the forward passes' and selectors' transient tensors then stay in the heap as
// free but resident fragments, growing block by block (measured: 663 MiB anonymous memory within block 3 of a
// hidden-1024 LLaMA, against 488 MiB and flat with the fixed threshold, in the same time). Call it once, first.
void tune_allocator();
// Undoes tune_allocator() for a model whose decoder block holds at most kSmallBlockBytes of weights: glibc's
// largest mmap threshold (32 MiB), a trim threshold of 1 GiB and no release_free_memory() between blocks keep the
// short-lived tensors of its many small operations in the heap, pages already faulted in. With every tensor over
// 256 KiB mapped and unmapped, zeroing fresh pages took a third of stories260k's prune (sys 2.8 s of 7.7 s on one
// thread; 0.6 s after); with the heap trimmed whenever 64 MiB were free at its top and between blocks, 0.6 s of
// 3.7 s still went to 104,000 page faults (33,000 after, 0.3 s). Such a model's transient tensors are too small for
// the heap fragments above to matter. Leaves a MALLOC_MMAP_THRESHOLD_ the user set alone.
inline constexpr int64_t kSmallBlockBytes = 16ll << 20;
void fit_allocator_to_block(int64_t block_weight_bytes);
// While it lives, glibc keeps freed allocations of up to 32 MiB in the heap for the next ones (its largest mmap
// threshold, a trim threshold of 1 GiB); when it ends, tune_allocator()'s settings come back and the free heap goes
// back to the kernel (malloc_trim). For work that allocates the same large temporaries over and over, such as an
// iterative solve's [rows, n] vectors every CG step: mapped afresh each time, their pages are faulted in and zeroed
// again, and that made OPT-125M's fc2 solve take 1.4-1.5x its time (14.5-15.0 s against 9.9-10.7 s, 1.44 million
// page faults against 0.6). Does nothing unless tune_allocator() fixed the threshold (not for small blocks, not when
// the user set MALLOC_MMAP_THRESHOLD_) and inside another such scope. For one thread at a time.
class HeapReuseScope {
 public:
  HeapReuseScope();
  ~HeapReuseScope();
  HeapReuseScope(const HeapReuseScope&) = delete;
  HeapReuseScope& operator=(const HeapReuseScope&) = delete;

 private:
  bool active_ = false;
};

// Wall seconds since `start` on the steady clock (phase timings in reports).
using SteadyClock = std::chrono::steady_clock;
inline double seconds_since(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

}  // namespace optima
