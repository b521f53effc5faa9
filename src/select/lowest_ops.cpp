// Exact-count "k lowest" selections with the lower-index tie rule (see lowest_ops.h).
#include "optima/select/lowest_ops.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/kthvalue.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>

#include <tuple>

#include "optima/core/error.h"

namespace optima {

at::Tensor kth_smallest(const at::Tensor& scores, int64_t k) {
  const at::Tensor flat = scores.reshape({-1});
  OPTIMA_ASSERT(k >= 1 && k <= flat.numel());
  // As in global_threshold_mask: a selection on the CPU, a radix sort on CUDA (where kthvalue of one long slice is
  // slow).
  return flat.is_cpu() ? std::get<0>(at::kthvalue(flat, k)) : std::get<0>(at::sort(flat)).select(0, k - 1);
}

at::Tensor lowest_k_mask(const at::Tensor& scores, int64_t k) {
  const auto bool_options = scores.options().dtype(at::kBool);
  if (k <= 0) return at::zeros(scores.sizes(), bool_options);
  if (k >= scores.numel()) return at::ones(scores.sizes(), bool_options);
  const at::Tensor flat = scores.reshape({-1});
  const at::Tensor threshold = kth_smallest(flat, k);
  // Everything strictly below the k-th smallest, then as many of the entries equal to it as the count still needs,
  // in index order.
  const at::Tensor below = flat < threshold;
  const at::Tensor tied = flat == threshold;
  const at::Tensor still_needed = k - below.sum();
  const at::Tensor tie_rank = at::cumsum(tied, 0);
  return (below | (tied & (tie_rank <= still_needed))).reshape(scores.sizes());
}

at::Tensor lowest_n_of_m_mask(const at::Tensor& scores, int64_t n, int64_t m) {
  const int64_t rows = scores.size(0);
  const int64_t cols = scores.size(1);
  OPTIMA_ASSERT(m > 0 && n > 0 && n < m && cols % m == 0);
  // A stable ascending sort of each group keeps tied scores in column order; its first n positions are pruned.
  const at::Tensor grouped = scores.reshape({rows, cols / m, m});
  const at::Tensor order = std::get<1>(at::sort(grouped, /*stable=*/true, /*dim=*/2, /*descending=*/false));
  at::Tensor mask = at::zeros(grouped.sizes(), scores.options().dtype(at::kBool));
  mask.scatter_(2, order.narrow(2, 0, n), true);
  return mask.reshape({rows, cols});
}

}  // namespace optima
