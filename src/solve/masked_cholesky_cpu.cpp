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
// Inputs per span of the products with the blocks done (see pass); a multiple of kBlock.
constexpr int64_t kSpan = 512;

// Rows are solved kLanes at a time, each step a vector operation across the rows: within a row every step depends
// on the one before, and a dot product along the row would not vectorize without reassociating its sum.
// 16 lanes are two AVX registers of floats (four of doubles); the sums run in several chains (dot_group).
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
// tiles are only as aligned as std::vector makes them.
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
  // Inputs whose sums run together (dot_group): kGroup x kVectors accumulators, 8 vector registers.
  static constexpr int64_t kGroup = 8 / kVectors;
  static OPTIMA_INLINE V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static OPTIMA_INLINE void store(T* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }
  static OPTIMA_INLINE V splat(T x) { return V{} + x; }
};

// acc[g] = Σ_{j in [begin, end)} coeffs[g][j] · vecs[j] for the kGroup inputs of a group at once (vecs
// [·][kLanes], lane-major): each vector loaded serves kGroup multiply-adds, and the kGroup x kVectors sums are
// independent chains that keep fused multiply-adds in flight back to back (8 vector registers of accumulators).
template <typename T>
OPTIMA_INLINE void dot_group(const T* const* coeffs, const T* vecs, int64_t begin, int64_t end,
                             typename Lanes<T>::V (*acc)[Lanes<T>::kVectors]) {
  using L = Lanes<T>;
  using V = typename L::V;
  constexpr int64_t kV = L::kVectors, kW = L::kWidth, kG = L::kGroup;
  for (int64_t g = 0; g < kG; ++g)
    for (int64_t v = 0; v < kV; ++v) acc[g][v] = V{};
  for (int64_t j = begin; j < end; ++j) {
    V x[kV];
    for (int64_t v = 0; v < kV; ++v) x[v] = L::load(vecs + j * kLanes + v * kW);
    for (int64_t g = 0; g < kG; ++g) {
      const V c = L::splat(coeffs[g][j]);
      for (int64_t v = 0; v < kV; ++v) acc[g][v] += c * x[v];
    }
  }
}

// acc += Σ_{j in [begin, end)} coeffs[j] · vecs[j] for one input: the terms of its sum within its own group, which
// depend on the inputs solved just before it.
template <typename T>
OPTIMA_INLINE void dot_add(const T* coeffs, const T* vecs, int64_t begin, int64_t end, typename Lanes<T>::V* acc) {
  using L = Lanes<T>;
  for (int64_t j = begin; j < end; ++j) {
    const typename L::V c = L::splat(coeffs[j]);
    for (int64_t v = 0; v < L::kVectors; ++v) acc[v] += c * L::load(vecs + j * kLanes + v * L::kWidth);
  }
}

// Lane-major tiles [b][kLanes] of one group of rows: the block's entries of each row, turned so that one input's
// values for the group are adjacent and every step is a few vector operations. Each row's entries are read in one
// run. Before, each step read one entry from each of the group's rows, n entries apart, and ran its epilogue lane by
// lane: the diagonal blocks of two fp32 passes over 768 x 3072 took 0.048 s on one thread, with these tiles and
// dot_group 0.026 s. Inside the passes that gain needs the prefetching below as well (prefetch_share).
template <typename T>
class GroupTiles {
 public:
  explicit GroupTiles(int64_t size, int64_t tiles) : size_(size), data_(static_cast<size_t>(tiles * size * kLanes)) {}
  T* tile(int64_t index) { return data_.data() + index * size_ * kLanes; }
  // Rows first.. of a row-major array (row length `stride`, or 0 everywhere when a is null) into tile `index`; the
  // lanes past the last row repeat it (they are solved and dropped).
  void turn_in(int64_t index, const T* a, int64_t stride, int64_t first, int64_t lanes) {
    T* t = tile(index);
    for (int64_t l = 0; l < kLanes; ++l) {
      const T* row = a != nullptr ? a + (first + std::min(l, lanes - 1)) * stride : nullptr;
      for (int64_t i = 0; i < size_; ++i) t[i * kLanes + l] = row != nullptr ? row[i] : T(0);
    }
  }
  // The share of step i (of size_) in fetching rows next.. of a row-major array ahead of their turn_in: the rows are
  // read in runs of size_ entries, n apart, which the hardware prefetchers follow poorly, and by then the products of
  // the pass have evicted them from the caches. Timed inside the passes (fc2-sized, 2 threads), the diagonal blocks
  // took as long with the tiles alone as before them, and a third less with this.
  void prefetch_share(const T* a, int64_t stride, int64_t next, int64_t rows, int64_t i) const {
    constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));
    const int64_t per_row = (size_ + kLine - 1) / kLine, lines = kLanes * per_row;
    if (a == nullptr) return;
    for (int64_t k = i * lines / size_; k < (i + 1) * lines / size_; ++k) {
      const int64_t row = next + k / per_row;
      if (row < rows) __builtin_prefetch(a + row * stride + (k % per_row) * kLine);
    }
  }
  void turn_out(int64_t index, T* a, int64_t stride, int64_t first, int64_t lanes) {
    const T* t = tile(index);
    for (int64_t l = 0; l < lanes; ++l) {
      T* row = a + (first + l) * stride;
      for (int64_t i = 0; i < size_; ++i) row[i] = t[i * kLanes + l];
    }
  }

 private:
  int64_t size_;
  std::vector<T> data_;
};

// One input's step for the group, as vector operations on the tiles at offset o = i · kLanes:
// t = off + sum; value = kept ? (rhs − t) · inv : fallback (0 where fallback is null). Returns t's vectors in `t`.
template <typename T>
OPTIMA_INLINE void solve_input(const typename Lanes<T>::V* sum, const T* off, const T* rhs, const T* kept,
                               const T* fallback, T inv, T* value, typename Lanes<T>::V* t) {
  using L = Lanes<T>;
  using V = typename L::V;
  for (int64_t v = 0; v < L::kVectors; ++v) {
    const int64_t o = v * L::kWidth;
    t[v] = L::load(off + o) + sum[v];
    const V solved = (L::load(rhs + o) - t[v]) * L::splat(inv);
    const V other = fallback != nullptr ? L::load(fallback + o) : V{};
    L::store(value + o, L::load(kept + o) != V{} ? solved : other);
  }
}

template <typename T>
OPTIMA_INLINE void forward_rows(const MaskedBlock<T>& b) {
  using L = Lanes<T>;
  using V = typename L::V;
  constexpr int64_t kV = L::kVectors, kG = L::kGroup;
  enum { kZ, kOff, kKept, kRhs, kGiven, kTiles };
  GroupTiles<T> tiles(b.size, kTiles);
  T* z = tiles.tile(kZ);  // the vectors the sums run over
  for (int64_t first = 0; first < b.rows; first += kLanes) {
    const int64_t lanes = std::min(kLanes, b.rows - first);
    tiles.turn_in(kOff, b.off, b.off_stride, first, lanes);
    tiles.turn_in(kKept, b.kept, b.stride, first, lanes);
    tiles.turn_in(kRhs, b.rhs, b.stride, first, lanes);
    tiles.turn_in(kGiven, b.given, b.stride, first, lanes);
    for (int64_t i0 = 0; i0 < b.size; i0 += kG) {
      // The group's rows of L; past the block's end, its last row (read, never used).
      const T* rows_of_l[kG];
      for (int64_t g = 0; g < kG; ++g) rows_of_l[g] = b.l + std::min(i0 + g, b.size - 1) * b.ld;
      V acc[kG][kV];
      dot_group<T>(rows_of_l, z, 0, i0, acc);  // Σ_{j<i0} L_ij z_j
      for (int64_t g = 0; g < std::min(kG, b.size - i0); ++g) {
        const int64_t i = i0 + g, o = i * kLanes;
        dot_add<T>(rows_of_l[g], z, i0, i, acc[g]);  // the rest of Σ_{j<i} L_ij z_j
        V t[kV];
        solve_input<T>(acc[g], tiles.tile(kOff) + o, tiles.tile(kRhs) + o, tiles.tile(kKept) + o,
                       tiles.tile(kGiven) + o, T(1) / rows_of_l[g][i], z + o, t);
        for (const T* a : {b.kept, b.rhs, b.given}) tiles.prefetch_share(a, b.stride, first + kLanes, b.rows, i);
      }
    }
    tiles.turn_out(kZ, b.out, b.stride, first, lanes);
  }
}

template <typename T>
OPTIMA_INLINE void backward_rows(const MaskedBlock<T>& b) {
  using L = Lanes<T>;
  using V = typename L::V;
  constexpr int64_t kV = L::kVectors, kW = L::kWidth, kG = L::kGroup;
  // The block of L transposed, [b][b]: row i holds L_ji for j > i, so that each t_i = Σ_{j>i} L_ji x_j is a sum
  // along a contiguous row, as in the forward pass (b² copies against rows · b² / 2 multiply-adds).
  std::vector<T> lt(static_cast<size_t>(b.size * b.size));
  for (int64_t j = 0; j < b.size; ++j)
    for (int64_t i = 0; i < j; ++i) lt[i * b.size + j] = b.l[j * b.ld + i];
  enum { kX, kSums, kOff, kKept, kRhs, kTiles };
  GroupTiles<T> tiles(b.size, kTiles);
  T* x = tiles.tile(kX);
  for (int64_t first = 0; first < b.rows; first += kLanes) {
    const int64_t lanes = std::min(kLanes, b.rows - first);
    tiles.turn_in(kOff, b.off, b.off_stride, first, lanes);
    tiles.turn_in(kKept, b.kept, b.stride, first, lanes);
    tiles.turn_in(kRhs, b.rhs, b.stride, first, lanes);
    // Groups of inputs [i0, end), from the last; within a group, i descending.
    for (int64_t end = b.size; end > 0; end -= kG) {
      const int64_t i0 = std::max<int64_t>(0, end - kG);
      const T* rows_of_lt[kG];
      for (int64_t g = 0; g < kG; ++g) rows_of_lt[g] = lt.data() + std::max(end - 1 - g, i0) * b.size;
      V acc[kG][kV];
      dot_group<T>(rows_of_lt, x, end, b.size, acc);  // Σ_{j≥end} L_ji x_j
      for (int64_t g = 0; g < end - i0; ++g) {
        const int64_t i = end - 1 - g, o = i * kLanes;
        dot_add<T>(rows_of_lt[g], x, i + 1, end, acc[g]);  // the rest of Σ_{j>i} L_ji x_j
        const T lii = b.l[i * b.ld + i];
        V t[kV];
        solve_input<T>(acc[g], tiles.tile(kOff) + o, tiles.tile(kRhs) + o, tiles.tile(kKept) + o, nullptr, T(1) / lii,
                       x + o, t);
        for (const T* a : {b.kept, b.rhs}) tiles.prefetch_share(a, b.stride, first + kLanes, b.rows, i);
        if (b.sums != nullptr)
          for (int64_t v = 0; v < kV; ++v)  // (Lᵀ x)_i
            L::store(tiles.tile(kSums) + o + v * kW, t[v] + L::splat(lii) * L::load(x + o + v * kW));
      }
    }
    tiles.turn_out(kX, b.out, b.stride, first, lanes);
    if (b.sums != nullptr) tiles.turn_out(kSums, b.sums, b.stride, first, lanes);
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
  b.off_stride = off.stride(0);
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

// A whole pass, block by block, over the row tensors as given (on the CPU, one thread's share of the rows). Each
// block's products with the blocks done ([rows, b]: the inputs solved so far times L's block row, or column) are
// taken in two parts: one product per span of kSpan inputs with everything before the span, then, within the span,
// with the span's blocks done. The inputs solved so far are the operand a product packs afresh each time; per block
// they were packed n / 256 times a pass on average, per span a quarter as often.
void pass(const at::Tensor& l, const at::Tensor& rhs, const at::Tensor& given, const at::Tensor& kept, at::Tensor& out,
          at::Tensor* sums, bool backward) {
  const int64_t n = l.size(0), rows = kept.size(0);
  at::Tensor span_off = at::empty({rows, std::min(kSpan, n)}, kept.options());
  if (!backward) {
    for (int64_t span = 0; span < n; span += kSpan) {
      const int64_t span_size = std::min(kSpan, n - span);
      at::Tensor earlier = span_off.narrow(1, 0, span_size);
      // The earlier spans' share: z[:, :span] L[span:span+size, :span]ᵀ.
      if (span == 0)
        earlier.zero_();
      else
        at::mm_out(earlier, out.narrow(1, 0, span), l.narrow(0, span, span_size).narrow(1, 0, span).t());
      for (int64_t s = span; s < span + span_size; s += kBlock) {
        const int64_t size = std::min(kBlock, span + span_size - s);
        at::Tensor off = earlier.narrow(1, s - span, size);
        // The span's earlier blocks: z[:, span:s] L[s:s+size, span:s]ᵀ.
        if (s > span) off.addmm_(out.narrow(1, span, s - span), l.narrow(0, s, size).narrow(1, span, s - span).t());
        run_block(l, s, size, off, rhs, given, kept, out, nullptr, /*backward=*/false);
      }
    }
    return;
  }
  // Spans and blocks from the last; the first of each takes what is left over, so the others are whole.
  for (int64_t span_end = n; span_end > 0; span_end -= kSpan) {
    const int64_t span = std::max<int64_t>(0, span_end - kSpan), span_size = span_end - span;
    at::Tensor later = span_off.narrow(1, 0, span_size);
    // The later spans' share: x[:, span_end:] L[span_end:, span:span_end].
    if (span_end == n)
      later.zero_();
    else
      at::mm_out(later, out.narrow(1, span_end, n - span_end),
                 l.narrow(0, span_end, n - span_end).narrow(1, span, span_size));
    for (int64_t e = span_end; e > span; e -= kBlock) {
      const int64_t s = std::max(span, e - kBlock), size = e - s;
      at::Tensor off = later.narrow(1, s - span, size);
      // The span's later blocks: x[:, e:span_end] L[e:span_end, s:e].
      if (e < span_end) off.addmm_(out.narrow(1, e, span_end - e), l.narrow(0, e, span_end - e).narrow(1, s, size));
      run_block(l, s, size, off, rhs, at::Tensor(), kept, out, sums, /*backward=*/true);
    }
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
