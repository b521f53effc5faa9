// Building blocks shared by the mask selectors: turning a score matrix into a pruning mask under each pattern rule
// the reference implementations use. Scores: [out, in] real tensors, lower score = pruned first. Masks: bool, same
// shape, true where the weight is zeroed. All device-generic ATen code.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string_view>

namespace optima {

// Index into the ascending sorted scores that the reference code uses as threshold: int(count * sparsity), with
// Python's truncation of the double product.
int64_t threshold_index(int64_t count, double sparsity);

// One threshold over the whole tensor: the value at threshold_index(numel, sparsity) of the sorted scores; every
// score <= it is pruned (so one more than numel * sparsity is pruned unless there are ties). Magnitude's and
// SparseGPT's per-block rule.
at::Tensor global_threshold_mask(const at::Tensor& scores, double sparsity);

// Per row: a stable ascending sort of the scores, the first int(in * sparsity) are pruned (ties go to the lower
// column index). Wanda's unstructured rule.
at::Tensor per_row_mask(const at::Tensor& scores, double sparsity);

// Per row, in each group of m consecutive columns, the n lowest scores are pruned. scores.size(1) must be a
// multiple of m.
at::Tensor n_m_mask(const at::Tensor& scores, int64_t n, int64_t m);

// The dtype selectors compute in: float64 for float64 weights, else float32 (the reference's W.float()).
at::ScalarType compute_dtype(const at::Tensor& weight);

// Checks that `weight` is a 2-D floating tensor with at least one element; input error naming `who` otherwise.
void check_weight(const at::Tensor& weight, std::string_view who);

// Numeric error naming `who` and `what` ("the Hessian") when `tensor` has a NaN or an infinity.
void check_finite(const at::Tensor& tensor, std::string_view who, std::string_view what);

}  // namespace optima
