// A bit-exact copy of CPython's `random` module for the calls the reference calibration code makes
// (random.seed(int), random.randint, random.getrandbits): the same seed draws the same documents and windows as
// the published SparseGPT/Wanda/OPTIMA scripts, so calibration sets can match theirs token for token.
#pragma once

#include <array>
#include <cstdint>

namespace optima {

class PythonRandom {
 public:
  // random.seed(n) for a non-negative integer n (CPython's init_by_array over n's 32-bit words).
  explicit PythonRandom(uint64_t seed);
  // One MT19937 output word.
  uint32_t next_u32();
  // random.getrandbits(k), 1 <= k <= 64.
  uint64_t getrandbits(int k);
  // random.randint(a, b): uniform in [a, b], by rejection sampling on getrandbits as CPython does.
  int64_t randint(int64_t a, int64_t b);

 private:
  static constexpr int kN = 624;
  std::array<uint32_t, kN> mt_{};
  int index_ = kN;
};

}  // namespace optima
