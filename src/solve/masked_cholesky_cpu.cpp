// Masked triangular passes with a shared Cholesky factor (see masked_cholesky.h): the blocked passes, which any
// device runs through ATen's products, and the CPU kernel of their diagonal blocks.
#include "masked_cholesky.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "optima/core/error.h"
#include "solve_common.h"

namespace optima::solve_detail {

namespace {

// Inputs per block. The diagonal blocks cost rows·n·b/2 multiply-adds per pass outside the products (n²/2), so
// b/n of a pass (4-17% for n = 768-3072 at 128), at a fraction of the product rate; but each input of a block is
// read and written once per pass whatever b is, and those strided reads across the rows cost as much as the
// multiply-adds at b = 64. On 2 cores, two passes at n = 3072 took 1.3 products at 128 against 1.5-1.6 at 64 and
// 256 (bench_solver "passes").
constexpr int64_t kBlock = 128;

// Rows are solved kLanes at a time, each step a vector operation across the rows: within a row every step depends
// on the one before, and a dot product along the row would not vectorize without reassociating its sum.
// 16 lanes are two AVX registers of floats (four of doubles); the sums run in several chains (dot_lanes).
constexpr int64_t kLanes = 16;

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define OPTIMA_MASKED_AVX2 1
#define OPTIMA_INLINE inline __attribute__((always_inline))
#else
#define OPTIMA_MASKED_AVX2 0
#define OPTIMA_INLINE inline
#endif

// The lanes as vectors of 32 bytes (GCC/Clang vector extensions): AVX registers in the AVX2 build of the kernels
// below, pairs of SSE registers in the baseline one. Loads and stores go through memcpy (unaligned moves), as the
// row buffers are only as aligned as std::vector makes them.
// The helpers below pass vectors by value but are always inlined, so the calling convention GCC warns about
// (AVX vectors returned from code built without AVX) never applies. (For the rest of the file: GCC reports it where
// the templates are instantiated, at its end.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
template <typename T>
struct Vector32;
template <>
struct Vector32<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vector32<double> {
  typedef double type __attribute__((vector_size(32)));
};

template <typename T>
struct Lanes {
  using V = typename Vector32<T>::type;
  static constexpr int64_t kWidth = static_cast<int64_t>(32 / sizeof(T));
  static constexpr int64_t kVectors = kLanes / kWidth;
  static OPTIMA_INLINE V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static OPTIMA_INLINE void store(T* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }
  static OPTIMA_INLINE V splat(T x) { return V{} + x; }
};

// Row r's value of input i of the block in a row-major [rows, ·] array (0 where the array is absent).
template <typename T>
OPTIMA_INLINE T entry(const T* a, int64_t stride, int64_t r, int64_t i) {
  return a != nullptr ? a[r * stride + i] : T(0);
}

// Σ_c coeffs[c] · vecs[c] over `count` vectors of kLanes (vecs [count][kLanes]) into sum [kLanes]. The sums run in
// independent chains of c, enough of them that fused multiply-adds are in flight back to back rather than each
// waiting for the one before (4 cycles apiece): 8 vector registers of accumulators in all, 4 chains of floats (2
// vectors per chain), 2 of doubles (4 per chain).
template <typename T>
OPTIMA_INLINE void dot_lanes(const T* coeffs, const T* vecs, int64_t count, T* sum) {
  using L = Lanes<T>;
  using V = typename L::V;
  constexpr int64_t kV = L::kVectors, kW = L::kWidth, kChains = 8 / kV;
  V acc[kChains][kV];
  for (int64_t c = 0; c < kChains; ++c)
    for (int64_t v = 0; v < kV; ++v) acc[c][v] = V{};
  int64_t j = 0;
  for (; j + kChains <= count; j += kChains)
    for (int64_t c = 0; c < kChains; ++c) {
      const V lc = L::splat(coeffs[j + c]);
      for (int64_t v = 0; v < kV; ++v) acc[c][v] += lc * L::load(vecs + (j + c) * kLanes + v * kW);
    }
  for (int64_t c = 0; j < count; ++j, ++c) {
    const V lc = L::splat(coeffs[j]);
    for (int64_t v = 0; v < kV; ++v) acc[c][v] += lc * L::load(vecs + j * kLanes + v * kW);
  }
  for (int64_t c = 1; c < kChains; ++c)
    for (int64_t v = 0; v < kV; ++v) acc[0][v] += acc[c][v];
  for (int64_t v = 0; v < kV; ++v) L::store(sum + v * kW, acc[0][v]);
}

template <typename T>
OPTIMA_INLINE void forward_rows(const MaskedBlock<T>& b) {
  // z of kLanes rows, [b][kLanes]: the vectors the sums run over. The block's other inputs are read where needed,
  // once per input and row; only z is reused (b/2 times on average).
  std::vector<T> z(static_cast<size_t>(b.size * kLanes));
  for (int64_t first = 0; first < b.rows; first += kLanes) {
    const int64_t lanes = std::min(kLanes, b.rows - first);
    for (int64_t i = 0; i < b.size; ++i) {
      const T* li = b.l + i * b.ld;
      T sum[kLanes];
      dot_lanes(li, z.data(), i, sum);  // Σ_{j<i} L_ij z_j
      T* zi = z.data() + i * kLanes;
      const T inv = T(1) / li[i];
      for (int64_t l = 0; l < lanes; ++l) {
        const int64_t r = first + l;
        const T t = b.off[r * b.size + i] + sum[l];
        const T value = b.kept[r * b.stride + i] != T(0) ? (entry(b.rhs, b.stride, r, i) - t) * inv
                                                         : entry(b.given, b.stride, r, i);
        zi[l] = value;
        b.out[r * b.stride + i] = value;
      }
      for (int64_t l = lanes; l < kLanes; ++l) zi[l] = T(0);
    }
  }
}

template <typename T>
OPTIMA_INLINE void backward_rows(const MaskedBlock<T>& b) {
  // The block of L transposed, [b][b]: row i holds L_ji for j > i, so that each t_i = Σ_{j>i} L_ji x_j is a sum
  // along a contiguous row, as in the forward pass (b² copies against rows · b² / 2 multiply-adds).
  std::vector<T> lt(static_cast<size_t>(b.size * b.size));
  for (int64_t j = 0; j < b.size; ++j)
    for (int64_t i = 0; i < j; ++i) lt[i * b.size + j] = b.l[j * b.ld + i];
  // x of kLanes rows, [b][kLanes].
  std::vector<T> x(static_cast<size_t>(b.size * kLanes));
  for (int64_t first = 0; first < b.rows; first += kLanes) {
    const int64_t lanes = std::min(kLanes, b.rows - first);
    for (int64_t i = b.size - 1; i >= 0; --i) {
      T sum[kLanes];
      dot_lanes(lt.data() + i * b.size + i + 1, x.data() + (i + 1) * kLanes, b.size - 1 - i, sum);
      T* xi = x.data() + i * kLanes;
      const T lii = b.l[i * b.ld + i], inv = T(1) / lii;
      for (int64_t l = 0; l < lanes; ++l) {
        const int64_t r = first + l;
        const T t = b.off[r * b.size + i] + sum[l];
        xi[l] = b.kept[r * b.stride + i] != T(0) ? (entry(b.rhs, b.stride, r, i) - t) * inv : T(0);
        b.out[r * b.stride + i] = xi[l];
        if (b.sums != nullptr) b.sums[r * b.stride + i] = t + lii * xi[l];  // (Lᵀ x)_i
      }
      for (int64_t l = lanes; l < kLanes; ++l) xi[l] = T(0);
    }
  }
}

// The same kernels compiled twice: for the baseline the library is built for, and for AVX2 with fused
// multiply-adds, picked at run time where the CPU has them. The build targets baseline x86-64 (SSE2) so that the
// binary runs anywhere; the diagonal blocks are the one place outside the BLAS where the vector width counts (there
// the compiler had left the lanes scalar: two passes at n = 3072-4096 cost 1.8-1.9 products before, 1.3-1.7 after,
// bench_solver "passes").
template <typename T>
void rows_baseline(const MaskedBlock<T>& b, bool backward) {
  if (backward)
    backward_rows(b);
  else
    forward_rows(b);
}
#if OPTIMA_MASKED_AVX2
template <typename T>
__attribute__((target("avx2,fma"))) void rows_avx2(const MaskedBlock<T>& b, bool backward) {
  if (backward)
    backward_rows(b);
  else
    forward_rows(b);
}
bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif
std::atomic<bool> baseline_only{false};

void check_pass_inputs(const char* where, const at::Tensor& l, const at::Tensor& kept,
                       std::initializer_list<const at::Tensor*> row_tensors) {
  if (l.dim() != 2 || l.size(0) != l.size(1) || !l.is_contiguous())
    fail_input(where, "factor", "contiguous [n, n]", shape_of(l));
  if (l.scalar_type() != at::kFloat && l.scalar_type() != at::kDouble)
    fail_input(where, "factor", "fp32 or fp64", dtype_of(l));
  for (const at::Tensor* t : row_tensors) {
    if (!t->defined()) continue;
    if (t->dim() != 2 || t->size(1) != l.size(0) || t->size(0) != kept.size(0) || !t->is_contiguous() ||
        t->scalar_type() != l.scalar_type() || t->device() != l.device())
      fail_input(where, "row tensor",
                 fmt::format("contiguous [{}, {}] {} on {}", kept.size(0), l.size(0), dtype_of(l), l.device().str()),
                 fmt::format("{} {} on {}", shape_of(*t), dtype_of(*t), t->device().str()));
  }
}

template <typename T>
MaskedBlock<T> block_at(const at::Tensor& l, int64_t s, int64_t size, const at::Tensor& off, const at::Tensor& rhs,
                        const at::Tensor& given, const at::Tensor& kept, at::Tensor& out, at::Tensor* sums) {
  const int64_t n = l.size(0);
  MaskedBlock<T> b;
  b.l = l.data_ptr<T>() + s * n + s;
  b.ld = n;
  b.size = size;
  b.rows = kept.size(0);
  b.stride = n;
  b.off = off.data_ptr<T>();
  b.rhs = rhs.defined() ? rhs.data_ptr<T>() + s : nullptr;
  b.given = given.defined() ? given.data_ptr<T>() + s : nullptr;
  b.kept = kept.data_ptr<T>() + s;
  b.out = out.data_ptr<T>() + s;
  b.sums = sums != nullptr ? sums->data_ptr<T>() + s : nullptr;
  return b;
}

void run_block(const at::Tensor& l, int64_t s, int64_t size, const at::Tensor& off, const at::Tensor& rhs,
               const at::Tensor& given, const at::Tensor& kept, at::Tensor& out, at::Tensor* sums, bool backward) {
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "masked_block", [&] {
    const MaskedBlock<scalar_t> b = block_at<scalar_t>(l, s, size, off, rhs, given, kept, out, sums);
    if (l.is_cuda())
      masked_block_cuda<scalar_t>(b, backward);
    else
      masked_block_cpu<scalar_t>(b, backward);
  });
}

// A whole pass, block by block, over the row tensors as given (on the CPU, one thread's share of the rows).
void pass(const at::Tensor& l, const at::Tensor& rhs, const at::Tensor& given, const at::Tensor& kept, at::Tensor& out,
          at::Tensor* sums, bool backward) {
  const int64_t n = l.size(0), rows = kept.size(0);
  at::Tensor off = at::empty({rows, std::min(kBlock, n)}, kept.options());
  const auto block_off = [&](int64_t size) {
    return size == off.size(1) ? off : at::empty({rows, size}, kept.options());
  };
  if (!backward) {
    for (int64_t s = 0; s < n; s += kBlock) {
      const int64_t size = std::min(kBlock, n - s);
      at::Tensor earlier = block_off(size);
      // The earlier blocks' share: z[:, :s] L[s:s+size, :s]ᵀ.
      if (s == 0)
        earlier.zero_();
      else
        at::mm_out(earlier, out.narrow(1, 0, s), l.narrow(0, s, size).narrow(1, 0, s).t());
      run_block(l, s, size, earlier, rhs, given, kept, out, nullptr, /*backward=*/false);
    }
    return;
  }
  // Blocks from the last; the first block takes what is left over, so the others are whole.
  for (int64_t e = n; e > 0; e -= kBlock) {
    const int64_t s = std::max<int64_t>(0, e - kBlock), size = e - s;
    at::Tensor later = block_off(size);
    // The later blocks' share: x[:, e:] L[e:, s:e].
    if (e == n)
      later.zero_();
    else
      at::mm_out(later, out.narrow(1, e, n - e), l.narrow(0, e, n - e).narrow(1, s, size));
    run_block(l, s, size, later, rhs, at::Tensor(), kept, out, sums, /*backward=*/true);
  }
}

// On the CPU each thread runs whole passes over its own rows, its products single-threaded: a pass split by blocks
// instead switches between the products' threads and the diagonal blocks' 2 n / b times, and runs the diagonal
// blocks on one thread (at::parallel_for runs on the caller alone in sources built without OpenMP, as optima's are):
// on fc2 of a random OPT-125M-shaped model the other thread waited through a third of the solve. On CUDA one pass
// covers every row.
void run_pass(const at::Tensor& l, const at::Tensor& rhs, const at::Tensor& given, const at::Tensor& kept,
              at::Tensor& out, at::Tensor* sums, bool backward) {
  const int64_t rows = kept.size(0);
  const int64_t slices = l.is_cuda() ? 1 : std::clamp<int64_t>(rows / (2 * kLanes), 1, at::get_num_threads());
  if (slices == 1) {
    pass(l, rhs, given, kept, out, sums, backward);
    return;
  }
  // Whole groups of lanes per slice, the last one taking what is left.
  const int64_t per_slice = (rows + slices * kLanes - 1) / (slices * kLanes) * kLanes;
  const auto slice = [](const at::Tensor& t, int64_t begin, int64_t count) {
    return t.defined() ? t.narrow(0, begin, count) : t;
  };
  for_each_slice(/*cpu=*/true, slices, [&](int64_t index) {
    const int64_t begin = std::min(rows, index * per_slice), count = std::min(per_slice, rows - begin);
    if (count == 0) return;
    at::Tensor out_rows = out.narrow(0, begin, count);
    at::Tensor sums_rows = sums != nullptr ? sums->narrow(0, begin, count) : at::Tensor();
    pass(l, slice(rhs, begin, count), slice(given, begin, count), kept.narrow(0, begin, count), out_rows,
         sums != nullptr ? &sums_rows : nullptr, backward);
  });
}

}  // namespace

void set_masked_kernel_build(MaskedKernelBuild build) {
  baseline_only.store(build == MaskedKernelBuild::kBaseline, std::memory_order_relaxed);
}

template <typename T>
void masked_block_cpu(const MaskedBlock<T>& block, bool backward) {
#if OPTIMA_MASKED_AVX2
  if (!baseline_only.load(std::memory_order_relaxed) && cpu_has_avx2_fma()) return rows_avx2(block, backward);
#endif
  rows_baseline(block, backward);
}
template void masked_block_cpu<float>(const MaskedBlock<float>&, bool);
template void masked_block_cpu<double>(const MaskedBlock<double>&, bool);

#ifndef OPTIMA_WITH_CUDA
template <typename T>
void masked_block_cuda(const MaskedBlock<T>& /*block*/, bool /*backward*/) {
  fail_usage("masked_block: this build has no CUDA support");
}
template void masked_block_cuda<float>(const MaskedBlock<float>&, bool);
template void masked_block_cuda<double>(const MaskedBlock<double>&, bool);
#endif

at::Tensor masked_forward(const at::Tensor& l, const at::Tensor& rhs, const at::Tensor& given, const at::Tensor& kept) {
  check_pass_inputs("masked_forward", l, kept, {&rhs, &given, &kept});
  at::Tensor z = at::empty({kept.size(0), l.size(0)}, kept.options());
  run_pass(l, rhs, given, kept, z, nullptr, /*backward=*/false);
  return z;
}

at::Tensor masked_backward(const at::Tensor& l, const at::Tensor& rhs, const at::Tensor& kept, at::Tensor* sums) {
  check_pass_inputs("masked_backward", l, kept, {&rhs, &kept});
  at::Tensor x = at::empty({kept.size(0), l.size(0)}, kept.options());
  // The CUDA kernel accumulates in the sums, so it always gets them.
  at::Tensor own_sums;
  if (sums == nullptr && l.is_cuda()) sums = &own_sums;
  if (sums != nullptr) *sums = at::empty({kept.size(0), l.size(0)}, kept.options());
  run_pass(l, rhs, at::Tensor(), kept, x, sums, /*backward=*/true);
  return x;
}

}  // namespace optima::solve_detail
