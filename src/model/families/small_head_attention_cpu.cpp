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

// A sequence length rounded up to whole 8-lane blocks: the scratch rows' length.
constexpr int64_t padded_length(int64_t seq) {
  return (seq + kLanes - 1) / kLanes * kLanes;
}

// The sums of eight vectors, lane c of the result being the sum of a[c]'s lanes.
__attribute__((target("avx2,fma"))) inline Vec8 lane_sums(const Vec8 (&a)[kLanes]) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);  // halves of a[0..3] and of a[4..7]
  return _mm256_permute2f128_ps(u0, u1, 0x20) + _mm256_permute2f128_ps(u0, u1, 0x31);
}

// One key/value head transposed for attend_one_head: k and v [seq, dim] with rows k_stride and v_stride apart into
// keys_t and values_t [dim, padded seq] (zero past seq).
template <int kDim>
void transpose_keys_values(const float* k, int64_t k_stride, const float* v, int64_t v_stride, int64_t seq,
                           int64_t padded, float* keys_t, float* values_t) {
  for (int64_t j = 0; j < seq; ++j)
    for (int c = 0; c < kDim; ++c) {
      keys_t[c * padded + j] = k[j * k_stride + c];
      values_t[c * padded + j] = v[j * v_stride + c];
    }
}

// One query head against its key/value head: q and out [seq, dim] with rows q_stride and out_stride apart;
// keys_t and values_t from transpose_keys_values, scores [padded seq] scratch. Every loop keeps several independent
// vector sums in flight: a single running sum (one fused multiply-add after the other on the same register) waits on
// each one's latency, which made this kernel's first form 3x slower at head_dim 8.
template <int kDim>
__attribute__((target("avx2,fma"))) void attend_one_head(const float* q, int64_t q_stride, float* out,
                                                         int64_t out_stride, int64_t seq, float scale,
                                                         const float* keys_t, const float* values_t, float* scores) {
  const int64_t padded = padded_length(seq);
  constexpr int64_t kGroups = kDim / kLanes;
  constexpr int64_t kUnroll = 4;
  for (int64_t i = 0; i < seq; ++i) {
    const int64_t keys = i + 1, blocks = (keys + kLanes - 1) / kLanes;
    float query[kDim];
    for (int c = 0; c < kDim; ++c) query[c] = q[i * q_stride + c] * scale;
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
      store8(out + i * out_stride + g * kLanes, lane_sums(acc) * inverse);
    }
  }
}

// Every head of one key/value head (a group of query heads under grouped-query attention) for one window.
struct GroupTask {
  const float *q, *k, *v;
  float* out;
  int64_t q_head_stride, q_row_stride, k_row_stride, v_row_stride, out_row_stride, heads, seq;
  float scale;
};

template <int kDim>
void attend_group(const GroupTask& t, float* keys_t, float* values_t, float* scores) {
  const int64_t padded = padded_length(t.seq);
  transpose_keys_values<kDim>(t.k, t.k_row_stride, t.v, t.v_row_stride, t.seq, padded, keys_t, values_t);
  for (int64_t h = 0; h < t.heads; ++h)
    attend_one_head<kDim>(t.q + h * t.q_head_stride, t.q_row_stride, t.out + h * kDim, t.out_row_stride, t.seq, t.scale,
                          keys_t, values_t, scores);
}

using GroupKernel = void (*)(const GroupTask&, float*, float*, float*);

GroupKernel kernel_for(int64_t dim) {
  switch (dim) {
    case 8: return attend_group<8>;
    case 16: return attend_group<16>;
    case 24: return attend_group<24>;
    default: return attend_group<32>;
  }
}

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

}  // namespace

bool small_head_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (q.dim() != 4 || k.dim() != 4 || v.sizes() != k.sizes() || !q.device().is_cpu()) return false;
  const int64_t dim = q.size(3);
  const bool fp32 = q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat;
  const bool grouped = k.size(1) > 0 && q.size(1) % k.size(1) == 0;
  const bool rows_contiguous = q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1;
  return fp32 && grouped && rows_contiguous && k.size(0) == q.size(0) && k.size(2) == q.size(2) && k.size(3) == dim &&
         dim % kLanes == 0 && dim <= kMaxHeadDim && cpu_has_avx2_fma();
}

at::Tensor small_head_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t batch = q.size(0), heads = q.size(1), kv_heads = k.size(1), seq = q.size(2), dim = q.size(3);
  const int64_t group = heads / kv_heads;
  // Written as [batch, seq, heads, dim], the layout the output projection reads: the view returned is free to merge.
  at::Tensor out = at::empty({batch, seq, heads, dim}, q.options());
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
  const GroupKernel kernel = kernel_for(dim);
  const float *qp = q.const_data_ptr<float>(), *kp = k.const_data_ptr<float>(), *vp = v.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  const int64_t padded = padded_length(seq);
  parallel_ranges(batch * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> keys_t(static_cast<size_t>(dim * padded)), values_t(keys_t.size()),
        scores(static_cast<size_t>(padded));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / kv_heads, kv = task % kv_heads;
      const GroupTask t{qp + b * q.stride(0) + kv * group * q.stride(1),
                        kp + b * k.stride(0) + kv * k.stride(1),
                        vp + b * v.stride(0) + kv * v.stride(1),
                        op + (b * seq * heads + kv * group) * dim,
                        q.stride(1),
                        q.stride(2),
                        k.stride(2),
                        v.stride(2),
                        heads * dim,
                        group,
                        seq,
                        scale};
      kernel(t, keys_t.data(), values_t.data(), scores.data());
    }
  });
  return out.transpose(1, 2);
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
