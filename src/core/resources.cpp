// Peak memory of the process, for reports.
#include "optima/core/resources.h"

#include <malloc.h>
#include <sys/resource.h>

#include <cstdlib>
#include <fstream>
#include <string>

namespace optima {

int64_t peak_rss_bytes() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports kilobytes
}

ResidentBytes resident_bytes() {
  std::ifstream in("/proc/self/status");
  std::string key;
  ResidentBytes r;
  while (in >> key) {
    int64_t kib = 0;
    if (key == "RssAnon:" && in >> kib) r.anonymous = kib * 1024;
    if (key == "RssFile:" && in >> kib) r.file = kib * 1024;
  }
  return r;
}

namespace {
// Set for models of small blocks: their freed heap stays for the next block's tensors (see the header).
bool keep_free_memory = false;
// Whether tune_allocator() fixed the mmap threshold and it is still in force (what HeapReuseScope lifts).
bool large_allocations_mapped = false;
bool in_heap_reuse_scope = false;
constexpr int kMappedThreshold = 256 * 1024;
constexpr int kLargestMmapThreshold = 32 << 20;    // glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit machines
constexpr int kDefaultTrimThreshold = 128 * 1024;  // glibc's DEFAULT_TRIM_THRESHOLD, in force after tune_allocator()
constexpr int kKeptHeapTrimThreshold = 1 << 30;    // far above what a small model's batches or one scope free at once

#if defined(__GLIBC__)
// Freed allocations up to glibc's largest mmap threshold stay in the heap, trimmed only past kKeptHeapTrimThreshold.
void keep_freed_heap() {
  mallopt(M_MMAP_THRESHOLD, kLargestMmapThreshold);
  mallopt(M_TRIM_THRESHOLD, kKeptHeapTrimThreshold);
}
#endif
}  // namespace

void tune_allocator() {
#if defined(__GLIBC__)
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr) return;
  mallopt(M_MMAP_THRESHOLD, kMappedThreshold);
  large_allocations_mapped = true;
#endif
}

void fit_allocator_to_block(int64_t block_weight_bytes) {
#if defined(__GLIBC__)
  keep_free_memory = block_weight_bytes <= kSmallBlockBytes;
  if (block_weight_bytes > kSmallBlockBytes || std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr) return;
  keep_freed_heap();
  large_allocations_mapped = false;
#else
  (void)block_weight_bytes;
#endif
}

HeapReuseScope::HeapReuseScope() {
#if defined(__GLIBC__)
  if (!large_allocations_mapped || in_heap_reuse_scope) return;
  keep_freed_heap();
  in_heap_reuse_scope = active_ = true;
#endif
}

HeapReuseScope::~HeapReuseScope() {
#if defined(__GLIBC__)
  if (!active_) return;
  mallopt(M_MMAP_THRESHOLD, kMappedThreshold);
  mallopt(M_TRIM_THRESHOLD, kDefaultTrimThreshold);
  malloc_trim(0);
  in_heap_reuse_scope = false;
#endif
}

void release_free_memory() {
#if defined(__GLIBC__)
  if (!keep_free_memory) malloc_trim(0);
#endif
}

}  // namespace optima
