// The symmetrized fp64 Hessian (see symmetrize.h): the CPU kernel and the ATen composition other devices run.
#include "symmetrize.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "optima/core/parallel.h"

namespace optima::solve_detail {

namespace {

// Square tiles of the transposed pass: two tiles of doubles (32 KiB each) stay in a core's L2 while one is read
// across its rows.
constexpr int64_t kTile = 64;
// Rows per piece handed to a thread in the gathering pass.
constexpr int64_t kRowsPerPiece = 16;

// First pass: g[i][j] = h[o_i][o_j] in fp64, row by row (a row of h is read whole, the gather stays in cache).
template <typename T>
void gather_rows(const T* h, const int64_t* order, int64_t n, double* g) {
  parallel_ranges(n, kRowsPerPiece, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* src = h + (order != nullptr ? order[i] : i) * n;
      double* dst = g + i * n;
      if (order == nullptr)
        for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<double>(src[j]);
      else
        for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<double>(src[order[j]]);
    }
  });
}

// Second pass, in place: g = (g + gᵀ) / 2, one pair of mirrored tiles at a time (each tile row of pairs is one
// piece of work).
void symmetrize_in_place(double* g, int64_t n) {
  const int64_t tiles = (n + kTile - 1) / kTile;
  parallel_ranges(tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ti = begin; ti < end; ++ti) {
      const int64_t i0 = ti * kTile, i1 = std::min(n, i0 + kTile);
      for (int64_t j0 = i0; j0 < n; j0 += kTile) {
        const int64_t j1 = std::min(n, j0 + kTile);
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = std::max(j0, i + 1); j < j1; ++j) {
            const double mean = 0.5 * (g[i * n + j] + g[j * n + i]);
            g[i * n + j] = mean;
            g[j * n + i] = mean;
          }
      }
    }
  });
}

}  // namespace

at::Tensor symmetrized_fp64_reference(const at::Tensor& h, const at::Tensor& order) {
  at::Tensor g = h.to(at::kDouble);
  if (order.defined()) g = at::index(g, {order.unsqueeze(1), order.unsqueeze(0)});
  return (g + g.t()).mul_(0.5);
}

at::Tensor symmetrized_fp64(const at::Tensor& h, const at::Tensor& order) {
  const bool cpu_kernel = h.is_cpu() && (h.scalar_type() == at::kFloat || h.scalar_type() == at::kDouble) &&
                          (!order.defined() || order.is_cpu());
  if (!cpu_kernel) return symmetrized_fp64_reference(h, order);
  const int64_t n = h.size(0);
  const at::Tensor src = h.contiguous();
  const at::Tensor index = order.defined() ? order.to(at::kLong).contiguous() : at::Tensor();
  at::Tensor g = at::empty({n, n}, h.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "symmetrized_fp64", [&] {
    gather_rows<scalar_t>(src.data_ptr<scalar_t>(), index.defined() ? index.data_ptr<int64_t>() : nullptr, n,
                          g.data_ptr<double>());
  });
  symmetrize_in_place(g.data_ptr<double>(), n);
  return g;
}

}  // namespace optima::solve_detail
