// CPython-compatible Mersenne Twister (see python_random.h). Follows the MT19937 reference (init_by_array) and
// CPython's Modules/_randommodule.c and Lib/random.py.
#include "optima/text/python_random.h"

#include <vector>

#include "optima/core/error.h"

namespace optima {

PythonRandom::PythonRandom(uint64_t seed) {
  // The key is the seed's 32-bit words, least significant first; zero is one word 0.
  std::vector<uint32_t> key;
  for (uint64_t n = seed; n != 0; n >>= 32) key.push_back(static_cast<uint32_t>(n & 0xffffffffu));
  if (key.empty()) key.push_back(0);

  mt_[0] = 19650218u;
  for (int i = 1; i < kN; ++i) mt_[i] = 1812433253u * (mt_[i - 1] ^ (mt_[i - 1] >> 30)) + static_cast<uint32_t>(i);
  int i = 1;
  size_t j = 0;
  for (size_t k = std::max<size_t>(kN, key.size()); k > 0; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1664525u)) + key[j] + static_cast<uint32_t>(j);
    ++i;
    ++j;
    if (i >= kN) {
      mt_[0] = mt_[kN - 1];
      i = 1;
    }
    if (j >= key.size()) j = 0;
  }
  for (int k = kN - 1; k > 0; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1566083941u)) - static_cast<uint32_t>(i);
    ++i;
    if (i >= kN) {
      mt_[0] = mt_[kN - 1];
      i = 1;
    }
  }
  mt_[0] = 0x80000000u;
  index_ = kN;
}

uint32_t PythonRandom::next_u32() {
  constexpr uint32_t kUpper = 0x80000000u, kLower = 0x7fffffffu, kMatrix = 0x9908b0dfu;
  if (index_ >= kN) {
    for (int k = 0; k < kN; ++k) {
      const uint32_t y = (mt_[k] & kUpper) | (mt_[(k + 1) % kN] & kLower);
      mt_[k] = mt_[(k + 397) % kN] ^ (y >> 1) ^ ((y & 1u) ? kMatrix : 0u);
    }
    index_ = 0;
  }
  uint32_t y = mt_[index_++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

uint64_t PythonRandom::getrandbits(int k) {
  OPTIMA_ASSERT(k >= 1 && k <= 64);
  if (k <= 32) return next_u32() >> (32 - k);
  // Little-endian 32-bit words; the last word keeps only its top (k mod 32) bits.
  const uint64_t low = next_u32();
  const uint64_t high = next_u32() >> (64 - k);
  return low | (high << 32);
}

int64_t PythonRandom::randint(int64_t a, int64_t b) {
  OPTIMA_ASSERT(b >= a);
  const uint64_t n = static_cast<uint64_t>(b - a) + 1;
  int bits = 0;
  for (uint64_t v = n; v != 0; v >>= 1) ++bits;
  uint64_t r = getrandbits(bits);
  while (r >= n) r = getrandbits(bits);
  return a + static_cast<int64_t>(r);
}

}  // namespace optima
