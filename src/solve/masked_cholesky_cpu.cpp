// Masked triangular passes with a shared Cholesky factor (see masked_cholesky.h): the blocked passes, which any
// device runs through ATen's products, and the CPU kernel of their diagonal blocks.
#include "masked_cholesky.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "optima/core/error.h"
#include "solve_common.h"

namespace optima::solve_detail {

namespace {

// Inputs per block. The diagonal blocks cost rows·n·b/2 multiply-adds per pass outside the products (n²/2), so
// b/n of a pass; 64 keeps that at 2-8% for n = 768-3072 while the products [rows, k] x [k, 64] still run near the
// machine's product rate.
constexpr int64_t kBlock = 64;

// Rows are solved kLanes at a time, each step a vector operation across the rows: within a row every step depends
// on the one before, and a dot product along the row would not vectorize without reassociating its sum. The rows'
// entries of the block are copied into [b][kLanes] tiles first (b·kLanes values, against b²/2 steps on them).
constexpr int64_t kLanes = 8;

template <typename T>
struct Tiles {
  explicit Tiles(int64_t size) : rhs(size * kLanes), given(size * kLanes), kept(size * kLanes), t(size * kLanes) {}
  std::vector<T> rhs, given, kept, t;
  // Copies rows [first, first + lanes) of the block's inputs in; absent lanes and inputs read as 0.
  void load(const MaskedBlock<T>& b, int64_t first, int64_t lanes) {
    std::fill(rhs.begin(), rhs.end(), T(0));
    std::fill(given.begin(), given.end(), T(0));
    std::fill(kept.begin(), kept.end(), T(0));
    for (int64_t l = 0; l < lanes; ++l) {
      const int64_t r = first + l;
      for (int64_t i = 0; i < b.size; ++i) {
        const size_t at = static_cast<size_t>(i * kLanes + l);
        t[at] = b.off[r * b.size + i];
        kept[at] = b.kept[r * b.stride + i];
        if (b.rhs != nullptr) rhs[at] = b.rhs[r * b.stride + i];
        if (b.given != nullptr) given[at] = b.given[r * b.stride + i];
      }
    }
  }
};

template <typename T>
void forward_rows(const MaskedBlock<T>& b, int64_t begin, int64_t end) {
  Tiles<T> tiles(b.size);
  std::vector<T> z(static_cast<size_t>(b.size * kLanes));
  for (int64_t first = begin; first < end; first += kLanes) {
    const int64_t lanes = std::min(kLanes, end - first);
    tiles.load(b, first, lanes);
    for (int64_t i = 0; i < b.size; ++i) {
      const T* li = b.l + i * b.ld;
      T* t = tiles.t.data() + i * kLanes;
      for (int64_t j = 0; j < i; ++j) {
        const T lij = li[j];
        const T* zj = z.data() + j * kLanes;
        for (int64_t l = 0; l < kLanes; ++l) t[l] += lij * zj[l];
      }
      const T* kept = tiles.kept.data() + i * kLanes;
      const T* rhs = tiles.rhs.data() + i * kLanes;
      const T* given = tiles.given.data() + i * kLanes;
      T* zi = z.data() + i * kLanes;
      for (int64_t l = 0; l < kLanes; ++l) zi[l] = kept[l] != T(0) ? (rhs[l] - t[l]) / li[i] : given[l];
    }
    for (int64_t l = 0; l < lanes; ++l)
      for (int64_t i = 0; i < b.size; ++i) b.out[(first + l) * b.stride + i] = z[static_cast<size_t>(i * kLanes + l)];
  }
}

template <typename T>
void backward_rows(const MaskedBlock<T>& b, int64_t begin, int64_t end) {
  Tiles<T> tiles(b.size);
  std::vector<T> x(static_cast<size_t>(b.size * kLanes));
  for (int64_t first = begin; first < end; first += kLanes) {
    const int64_t lanes = std::min(kLanes, end - first);
    tiles.load(b, first, lanes);
    // Descending: once x_i is known, its share L_ij x_i of every earlier t_j is added (row i of L is contiguous).
    for (int64_t i = b.size - 1; i >= 0; --i) {
      const T* li = b.l + i * b.ld;
      T* t = tiles.t.data() + i * kLanes;
      const T* kept = tiles.kept.data() + i * kLanes;
      const T* rhs = tiles.rhs.data() + i * kLanes;
      T* xi = x.data() + i * kLanes;
      for (int64_t l = 0; l < kLanes; ++l) {
        xi[l] = kept[l] != T(0) ? (rhs[l] - t[l]) / li[i] : T(0);
        t[l] += li[i] * xi[l];  // t_i becomes (Lᵀ x)_i
      }
      for (int64_t j = 0; j < i; ++j) {
        const T lij = li[j];
        T* tj = tiles.t.data() + j * kLanes;
        for (int64_t l = 0; l < kLanes; ++l) tj[l] += lij * xi[l];
      }
    }
    for (int64_t l = 0; l < lanes; ++l)
      for (int64_t i = 0; i < b.size; ++i) {
        const size_t at = static_cast<size_t>(i * kLanes + l);
        b.out[(first + l) * b.stride + i] = x[at];
        if (b.sums != nullptr) b.sums[(first + l) * b.stride + i] = tiles.t[at];
      }
  }
}

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
// instead switches between the products' threads and the diagonal blocks' 2 n / b times, and on this kind of machine
// the threads' waits at those switches took a third of the time. On CUDA one pass covers every row.
void run_pass(const at::Tensor& l, const at::Tensor& rhs, const at::Tensor& given, const at::Tensor& kept,
              at::Tensor& out, at::Tensor* sums, bool backward) {
  if (l.is_cuda()) {
    pass(l, rhs, given, kept, out, sums, backward);
    return;
  }
  const auto slice = [](const at::Tensor& t, int64_t begin, int64_t count) {
    return t.defined() ? t.narrow(0, begin, count) : t;
  };
  at::parallel_for(0, kept.size(0), 2 * kLanes, [&](int64_t begin, int64_t end) {
    const int64_t count = end - begin;
    at::Tensor out_rows = out.narrow(0, begin, count);
    at::Tensor sums_rows = sums != nullptr ? sums->narrow(0, begin, count) : at::Tensor();
    pass(l, slice(rhs, begin, count), slice(given, begin, count), kept.narrow(0, begin, count), out_rows,
         sums != nullptr ? &sums_rows : nullptr, backward);
  });
}

}  // namespace

template <typename T>
void masked_block_cpu(const MaskedBlock<T>& block, bool backward) {
  if (backward)
    backward_rows(block, 0, block.rows);
  else
    forward_rows(block, 0, block.rows);
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
