// Causal attention for small heads on the CPU (see small_head_attention_cpu.h). The kernel works on one (window,
// head) pair at a time: keys and values transposed to [head_dim, seq] so that 8 keys' scores are one vector of
// products, their weights one vector exponential, and each output channel a vector sum over 8 keys at a time. It is
// compiled for AVX2 + FMA only and chosen at run time when the CPU has them; elsewhere LibTorch's attention runs.
#include "small_head_attention_cpu.h"

#include "optima/core/parallel.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace optima::ops {

#if defined(__x86_64__) && defined(__GNUC__)
namespace {

using Vec8 = float __attribute__((vector_size(32)));
using Vec8i = int32_t __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8;
constexpr int64_t kMaxHeadDim = 32;
constexpr float kMasked = -1e30f;

__attribute__((target("avx2,fma"))) inline Vec8 load8(const float* p) {
  Vec8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

__attribute__((target("avx2,fma"))) inline void store8(float* p, Vec8 v) {
  std::memcpy(p, &v, sizeof v);
}

// exp(x) for x <= 0: Cody-Waite reduction by ln 2 and Cephes' degree-6 polynomial for expf (about 1 ulp). Inputs
// below -87.3 (where exp leaves the normal range) give 0, as masked scores must.
__attribute__((target("avx2,fma"))) inline Vec8 exp_nonpositive(Vec8 x) {
  const Vec8 zero = {};
  const Vec8 floor_in = zero - 87.3f;
  const auto underflow = x < floor_in;
  x = underflow ? floor_in : x;
  const Vec8 n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest by the 1.5·2^23 trick
  Vec8 r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  Vec8 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const Vec8i bits = (__builtin_convertvector(n, Vec8i) + 127) << 23;  // 2^n, n >= -126
  Vec8 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return underflow ? zero : p * scale;
}

// The sums of eight vectors, lane c of the result being the sum of a[c]'s lanes.
__attribute__((target("avx2,fma"))) inline Vec8 lane_sums(const Vec8 (&a)[kLanes]) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);  // halves of a[0..3] and of a[4..7]
  return _mm256_permute2f128_ps(u0, u1, 0x20) + _mm256_permute2f128_ps(u0, u1, 0x31);
}

// One head: q, k, v, out [seq, dim] row-major; keys_t and values_t [dim, padded seq] (zero past seq) and scores
// [padded seq] are scratch. Every loop keeps several independent vector sums in flight: a single running sum (one
// fused multiply-add after the other on the same register) waits on each one's latency, which made this kernel's
// first form 3x slower at head_dim 8.
template <int kDim>
__attribute__((target("avx2,fma"))) void attend_one_head(const float* q, const float* k, const float* v, float* out,
                                                         int64_t seq, float scale, float* keys_t, float* values_t,
                                                         float* scores) {
  const int64_t padded = (seq + kLanes - 1) / kLanes * kLanes;
  for (int64_t j = 0; j < seq; ++j)
    for (int c = 0; c < kDim; ++c) {
      keys_t[c * padded + j] = k[j * kDim + c];
      values_t[c * padded + j] = v[j * kDim + c];
    }
  constexpr int64_t kGroups = kDim / kLanes;
  constexpr int64_t kUnroll = 4;
  for (int64_t i = 0; i < seq; ++i) {
    const int64_t keys = i + 1, blocks = (keys + kLanes - 1) / kLanes;
    float query[kDim];
    for (int c = 0; c < kDim; ++c) query[c] = q[i * kDim + c] * scale;
    // Scores, kUnroll blocks of 8 keys at a time.
    int64_t b = 0;
    for (; b + kUnroll <= blocks; b += kUnroll) {
      Vec8 s[kUnroll] = {};
      for (int c = 0; c < kDim; ++c)
        for (int64_t u = 0; u < kUnroll; ++u) s[u] += query[c] * load8(keys_t + c * padded + (b + u) * kLanes);
      for (int64_t u = 0; u < kUnroll; ++u) store8(scores + (b + u) * kLanes, s[u]);
    }
    for (; b < blocks; ++b) {
      Vec8 s = {};
      for (int c = 0; c < kDim; ++c) s += query[c] * load8(keys_t + c * padded + b * kLanes);
      store8(scores + b * kLanes, s);
    }
    for (int64_t j = keys; j < blocks * kLanes; ++j) scores[j] = kMasked;  // after the diagonal
    Vec8 most0 = Vec8{} + kMasked, most1 = most0;  // two named registers: an indexed pair lived on the stack
    for (b = 0; b + 2 <= blocks; b += 2) {
      const Vec8 s0 = load8(scores + b * kLanes), s1 = load8(scores + (b + 1) * kLanes);
      most0 = most0 > s0 ? most0 : s0;
      most1 = most1 > s1 ? most1 : s1;
    }
    if (b < blocks) {
      const Vec8 s0 = load8(scores + b * kLanes);
      most0 = most0 > s0 ? most0 : s0;
    }
    const Vec8 top8 = most0 > most1 ? most0 : most1;
    float top = top8[0];
    for (int lane = 1; lane < kLanes; ++lane) top = std::max(top, top8[lane]);
    // Weights e = exp(s - top) in place of the scores; masked keys get exactly 0.
    Vec8 total = {};
    for (b = 0; b < blocks; ++b) {
      const Vec8 e = exp_nonpositive(load8(scores + b * kLanes) - top);
      store8(scores + b * kLanes, e);
      total += e;
    }
    float sum = 0;
    for (int lane = 0; lane < kLanes; ++lane) sum += total[lane];
    const float inverse = 1.0f / sum;
    // Output: eight channels at a time, each with its own running sum over the keys.
    for (int64_t g = 0; g < kGroups; ++g) {
      Vec8 acc[kLanes] = {};
      const float* values = values_t + g * kLanes * padded;
      for (b = 0; b < blocks; ++b) {
        const Vec8 e = load8(scores + b * kLanes);
        for (int64_t c = 0; c < kLanes; ++c) acc[c] += e * load8(values + c * padded + b * kLanes);
      }
      store8(out + i * kDim + g * kLanes, lane_sums(acc) * inverse);
    }
  }
}

using HeadKernel = void (*)(const float*, const float*, const float*, float*, int64_t, float, float*, float*, float*);

HeadKernel kernel_for(int64_t dim) {
  switch (dim) {
    case 8: return attend_one_head<8>;
    case 16: return attend_one_head<16>;
    case 24: return attend_one_head<24>;
    default: return attend_one_head<32>;
  }
}

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

}  // namespace

bool small_head_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t dim = q.size(-1);
  return q.dim() == 4 && q.device().is_cpu() && q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat &&
         v.scalar_type() == at::kFloat && k.sizes() == q.sizes() && v.sizes() == q.sizes() && dim % kLanes == 0 &&
         dim <= kMaxHeadDim && cpu_has_avx2_fma();
}

at::Tensor small_head_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const int64_t batch_heads = q.size(0) * q.size(1), seq = q.size(2), dim = q.size(3);
  at::Tensor out = at::empty_like(qc);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
  const HeadKernel kernel = kernel_for(dim);
  const float *qp = qc.const_data_ptr<float>(), *kp = kc.const_data_ptr<float>(), *vp = vc.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  const int64_t padded = (seq + kLanes - 1) / kLanes * kLanes;
  parallel_ranges(batch_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> keys_t(static_cast<size_t>(dim * padded)), values_t(keys_t.size()),
        scores(static_cast<size_t>(padded));
    for (int64_t h = begin; h < end; ++h) {
      const int64_t offset = h * seq * dim;
      kernel(qp + offset, kp + offset, vp + offset, op + offset, seq, scale, keys_t.data(), values_t.data(),
             scores.data());
    }
  });
  return out;
}

#else  // other architectures: LibTorch's attention

bool small_head_attention_applies(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  return false;
}

at::Tensor small_head_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
}

#endif

}  // namespace optima::ops
