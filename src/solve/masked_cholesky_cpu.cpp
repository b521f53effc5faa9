// Masked triangular passes with a shared Cholesky factor (see masked_cholesky.h): the blocked passes, which any
// device runs through ATen's products, and the CPU kernel of their diagonal blocks.
#include "masked_cholesky.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "optima/core/error.h"
#include "optima/core/parallel.h"
#include "solve_common.h"

namespace optima::solve_detail {

namespace {

// Inputs per block. The diagonal blocks cost rows·n·b/2 multiply-adds per pass outside the products (n²/2), so
// b/n of a pass; 64 keeps that at 2-8% for n = 768-3072 while the products [rows, k] x [k, 64] still run near the
// machine's product rate.
constexpr int64_t kBlock = 64;

template <typename T>
void forward_rows(const MaskedBlock<T>& b, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const T* off = b.off + r * b.size;
    const T* rhs = b.rhs != nullptr ? b.rhs + r * b.stride : nullptr;
    const T* given = b.given != nullptr ? b.given + r * b.stride : nullptr;
    const T* kept = b.kept + r * b.stride;
    T* z = b.out + r * b.stride;
    for (int64_t i = 0; i < b.size; ++i) {
      const T* li = b.l + i * b.ld;
      T t = off[i];
      for (int64_t j = 0; j < i; ++j) t += li[j] * z[j];
      z[i] = kept[i] != T(0) ? ((rhs != nullptr ? rhs[i] : T(0)) - t) / li[i] : (given != nullptr ? given[i] : T(0));
    }
  }
}

template <typename T>
void backward_rows(const MaskedBlock<T>& b, int64_t begin, int64_t end) {
  std::vector<T> t(static_cast<size_t>(b.size));
  for (int64_t r = begin; r < end; ++r) {
    const T* rhs = b.rhs != nullptr ? b.rhs + r * b.stride : nullptr;
    const T* kept = b.kept + r * b.stride;
    T* x = b.out + r * b.stride;
    T* sums = b.sums != nullptr ? b.sums + r * b.stride : nullptr;
    std::copy(b.off + r * b.size, b.off + (r + 1) * b.size, t.begin());
    // Descending: once x_i is known, its share L_ij x_i of every earlier t_j is added (row i of L is contiguous).
    for (int64_t i = b.size - 1; i >= 0; --i) {
      const T* li = b.l + i * b.ld;
      const T xi = kept[i] != T(0) ? ((rhs != nullptr ? rhs[i] : T(0)) - t[i]) / li[i] : T(0);
      x[i] = xi;
      if (sums != nullptr) sums[i] = t[i] + li[i] * xi;
      if (xi != T(0))
        for (int64_t j = 0; j < i; ++j) t[j] += li[j] * xi;
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

}  // namespace

template <typename T>
void masked_block_cpu(const MaskedBlock<T>& block, bool backward) {
  parallel_ranges(block.rows, 8, [&](int64_t begin, int64_t end) {
    if (backward)
      backward_rows(block, begin, end);
    else
      forward_rows(block, begin, end);
  });
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
  const int64_t n = l.size(0), rows = kept.size(0);
  at::Tensor z = at::empty({rows, n}, kept.options());
  at::Tensor off = at::empty({rows, std::min(kBlock, n)}, kept.options());
  for (int64_t s = 0; s < n; s += kBlock) {
    const int64_t size = std::min(kBlock, n - s);
    at::Tensor block_off = size == off.size(1) ? off : at::empty({rows, size}, kept.options());
    // The earlier blocks' share: z[:, :s] L[s:s+size, :s]ᵀ.
    if (s == 0)
      block_off.zero_();
    else
      at::mm_out(block_off, z.narrow(1, 0, s), l.narrow(0, s, size).narrow(1, 0, s).t());
    run_block(l, s, size, block_off, rhs, given, kept, z, nullptr, /*backward=*/false);
  }
  return z;
}

at::Tensor masked_backward(const at::Tensor& l, const at::Tensor& rhs, const at::Tensor& kept, at::Tensor* sums) {
  check_pass_inputs("masked_backward", l, kept, {&rhs, &kept});
  const int64_t n = l.size(0), rows = kept.size(0);
  at::Tensor x = at::empty({rows, n}, kept.options());
  // The CUDA kernel accumulates in the sums, so it always gets them.
  at::Tensor own_sums;
  if (sums == nullptr && l.is_cuda()) sums = &own_sums;
  if (sums != nullptr) *sums = at::empty({rows, n}, kept.options());
  at::Tensor off = at::empty({rows, std::min(kBlock, n)}, kept.options());
  // Blocks from the last; the first block takes what is left over, so the others are whole.
  for (int64_t e = n; e > 0; e -= kBlock) {
    const int64_t s = std::max<int64_t>(0, e - kBlock), size = e - s;
    at::Tensor block_off = size == off.size(1) ? off : at::empty({rows, size}, kept.options());
    // The later blocks' share: x[:, e:] L[e:, s:e].
    if (e == n)
      block_off.zero_();
    else
      at::mm_out(block_off, x.narrow(1, e, n - e), l.narrow(0, e, n - e).narrow(1, s, size));
    run_block(l, s, size, block_off, rhs, at::Tensor(), kept, x, sums, /*backward=*/true);
  }
  return x;
}

}  // namespace optima::solve_detail
