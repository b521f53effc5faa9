// Wanda: score |W_ij| * sqrt(stat_j), where stat_j is the mean squared norm of input feature j over the calibration
// tokens; prune the lowest scores per row (unstructured) or per group of M columns (N:M). No weight update.
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/sqrt.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "optima/core/error.h"
#include "optima/select/mask_ops.h"
#include "optima/select/selector.h"

namespace optima {
namespace {

constexpr std::string_view kWho = "wanda selector";

class WandaSelector final : public MaskSelector {
 public:
  Selection select(const at::Tensor& weight, const LayerStats& stats, const SparsityPattern& target) const override {
    const at::NoGradGuard no_grad;  // weights may be parameters that require grad; selection is never traced
    check_weight(weight, kWho);
    const int64_t in = weight.size(1);
    target.check_fits(in, fmt::format("{}, weight [{}, {}]", kWho, weight.size(0), in));
    if (!stats.act_sq_norm.defined())
      fail(ErrorKind::kInternal, kWho, "the activation statistic (act_sq_norm) was not accumulated");
    if (stats.act_sq_norm.dim() != 1 || stats.act_sq_norm.size(0) != in)
      fail_input(kWho, "the activation statistic does not match the weight's input size", fmt::format("[{}]", in),
                 fmt::format("[{}]", fmt::join(stats.act_sq_norm.sizes(), ", ")));

    const at::ScalarType dtype = compute_dtype(weight);
    const at::Tensor w = weight.to(dtype);
    const at::Tensor stat = stats.act_sq_norm.to(weight.device(), dtype);
    check_finite(w, kWho, "the weight");
    check_finite(stat, kWho, "the activation statistic");
    if ((stat < 0).any().item<bool>())
      fail(ErrorKind::kNumeric, kWho, "the activation statistic (a mean of squares) has negative entries");

    const at::Tensor scores = w.abs() * at::sqrt(stat).unsqueeze(0);
    Selection result;
    result.pruned =
        target.is_n_m() ? n_m_mask(scores, target.n(), target.m()) : per_row_mask(scores, target.sparsity());
    result.weight = w.masked_fill(result.pruned, 0);
    return result;
  }
};

}  // namespace

std::unique_ptr<MaskSelector> make_wanda_selector(const SelectorSettings& /*settings*/) {
  return std::make_unique<WandaSelector>();
}

}  // namespace optima
