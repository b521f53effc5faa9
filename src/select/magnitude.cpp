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
  explicit MagnitudeSelector(const SelectorOptions& options) : pattern_(options.pattern) {}

  std::string name() const override { return "magnitude"; }
  bool needs_hessian() const override { return false; }
  bool needs_act_norms() const override { return false; }

  Selection select(const at::Tensor& weight, const LayerStats& /*stats*/) const override {
    const at::NoGradGuard no_grad;  // weights may be parameters that require grad; selection is never traced
    check_weight(weight, "magnitude selector");
    pattern_.check_fits(weight.size(1),
                        fmt::format("magnitude selector, weight [{}, {}]", weight.size(0), weight.size(1)));
    // Widening fp16/bf16 to fp32 is exact and monotone, so the mask is the one the reference finds on |W| in the
    // model's own dtype.
    const at::Tensor w = weight.to(compute_dtype(weight));
    check_finite(w, "magnitude selector", "the weight");
    const at::Tensor scores = w.abs();
    Selection result;
    result.pruned = pattern_.is_n_m() ? n_m_mask(scores, pattern_.n(), pattern_.m())
                                      : global_threshold_mask(scores, pattern_.sparsity());
    result.weight = w.masked_fill(result.pruned, 0);
    return result;
  }

 private:
  SparsityPattern pattern_;
};

}  // namespace

std::unique_ptr<MaskSelector> make_magnitude_selector(const SelectorOptions& options) {
  return std::make_unique<MagnitudeSelector>(options);
}

}  // namespace optima
