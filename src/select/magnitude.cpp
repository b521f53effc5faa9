// Magnitude pruning: zero the weights of smallest |w|, with one threshold per matrix (unstructured) or per group
// of M columns (N:M). No weight update, no statistics.
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include "optima/select/mask_ops.h"
#include "optima/select/selector.h"

namespace optima {
namespace {

class MagnitudeSelector final : public MaskSelector {
 public:
  Selection select(const at::Tensor& weight, const LayerStats& /*stats*/,
                   const SparsityPattern& target) const override {
    const at::NoGradGuard no_grad;  // weights may be parameters that require grad; selection is never traced
    check_weight(weight, "magnitude selector");
    target.check_fits(weight.size(1),
                      fmt::format("magnitude selector, weight [{}, {}]", weight.size(0), weight.size(1)));
    // Widening fp16/bf16 to fp32 is exact and monotone, so the mask is the one the reference finds on |W| in the
    // model's own dtype.
    const at::Tensor w = weight.to(compute_dtype(weight));
    check_finite(w, "magnitude selector", "the weight");
    const at::Tensor scores = w.abs();
    Selection result;
    result.pruned =
        target.is_n_m() ? n_m_mask(scores, target.n(), target.m()) : global_threshold_mask(scores, target.sparsity());
    result.weight = w.masked_fill(result.pruned, 0);
    return result;
  }
};

}  // namespace

std::unique_ptr<MaskSelector> make_magnitude_selector(const SelectorSettings& /*settings*/) {
  return std::make_unique<MagnitudeSelector>();
}

}  // namespace optima
