// Exact-count selections with a fixed tie rule, for the selectors whose reference picks "the k smallest" with an
// unspecified order among ties (Thanos, ADMM): the count is exact and ties go to the lower index, so results are
// reproducible across devices and against the float64 test oracles. Device-generic ATen code.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace optima {

// bool mask of scores' shape with exactly clamp(k, 0, numel) entries true: the k lowest scores, ties broken by the
// lower row-major (flat) index. A selection (kthvalue) plus a running count of the ties; no full sort on the CPU.
at::Tensor lowest_k_mask(const at::Tensor& scores, int64_t k);

// Per row, in each group of m consecutive columns, the n lowest scores (ties: the lower column first).
// scores.size(1) must be a multiple of m.
at::Tensor lowest_n_of_m_mask(const at::Tensor& scores, int64_t n, int64_t m);

// The k-th smallest entry (1-based) of all of `scores`, as a 0-dim tensor on its device (no host synchronisation).
at::Tensor kth_smallest(const at::Tensor& scores, int64_t k);

}  // namespace optima
