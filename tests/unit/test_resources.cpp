// glibc heap settings of core/resources.h: where large allocations come from inside and outside a HeapReuseScope.
// Each test runs in a child process (a death test) since the settings are process-wide.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "optima/core/resources.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#define OPTIMA_TEST_SANITIZED_ALLOCATOR 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define OPTIMA_TEST_SANITIZED_ALLOCATOR 1
#endif

namespace optima {
namespace {

#if defined(__GLIBC__) && !defined(OPTIMA_TEST_SANITIZED_ALLOCATOR)

constexpr size_t kLargeBytes = size_t{4} << 20;  // above tune_allocator()'s 256 KiB, below the scope's 32 MiB
void* volatile escaped = nullptr;                // keeps the compiler from eliding the allocations

// Whether an allocation of `bytes` gets its own mapping (glibc counts mapped chunks in hblkhd) rather than heap.
bool allocation_is_mapped(size_t bytes) {
  const size_t before = mallinfo2().hblkhd;
  escaped = std::malloc(bytes);
  std::memset(escaped, 1, bytes);
  const bool mapped = mallinfo2().hblkhd >= before + bytes;
  std::free(escaped);
  return mapped;
}

// Exits the child with 1 and a message when `holds` is false.
void require(bool holds, const char* what) {
  if (holds) return;
  std::fprintf(stderr, "failed: %s\n", what);
  std::exit(1);
}

TEST(ResourcesDeathTest, HeapReuseScopeServesLargeAllocationsFromTheHeapUntilItEnds) {
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr) GTEST_SKIP() << "MALLOC_MMAP_THRESHOLD_ is set";
  EXPECT_EXIT(
      {
        tune_allocator();
        require(allocation_is_mapped(kLargeBytes), "after tune_allocator, a 4 MiB allocation is mapped");
        {
          const HeapReuseScope reuse;
          require(!allocation_is_mapped(kLargeBytes), "inside the scope, a 4 MiB allocation comes from the heap");
          require(!allocation_is_mapped(kLargeBytes), "inside the scope, again from the heap");
          { const HeapReuseScope nested; }
          require(!allocation_is_mapped(kLargeBytes), "the end of a nested scope leaves the outer one's settings");
        }
        require(allocation_is_mapped(kLargeBytes), "after the scope, a 4 MiB allocation is mapped again");
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(ResourcesDeathTest, HeapReuseScopeLeavesSmallModelSettingsAlone) {
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr) GTEST_SKIP() << "MALLOC_MMAP_THRESHOLD_ is set";
  EXPECT_EXIT(
      {
        tune_allocator();
        fit_allocator_to_block(kSmallBlockBytes);
        require(!allocation_is_mapped(kLargeBytes), "with a small block's settings, a 4 MiB allocation is in the heap");
        { const HeapReuseScope reuse; }
        require(!allocation_is_mapped(kLargeBytes), "after a scope, still in the heap");
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

#endif

}  // namespace
}  // namespace optima
