// The selector factory and the mask-building rules the selectors share (global threshold, per-row, N:M).
#include "optima/select/selector.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/kthvalue.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/zeros.h>
#include <fmt/format.h>

#include <tuple>

#include "optima/core/error.h"
#include "optima/core/finite.h"
#include "optima/select/mask_ops.h"

namespace optima {

int64_t threshold_index(int64_t count, double sparsity) {
  // Python's int(count * sparsity): the product in double, truncated toward zero.
  return static_cast<int64_t>(static_cast<double>(count) * sparsity);
}

at::Tensor global_threshold_mask(const at::Tensor& scores, double sparsity) {
  const at::Tensor flat = scores.reshape({-1});
  const int64_t k = threshold_index(flat.numel(), sparsity);
  OPTIMA_ASSERT(k >= 0 && k < flat.numel());
  // sorted(flat)[k]. On the CPU a selection (nth_element) finds it without a full sort; on CUDA kthvalue's
  // single-slice selection is slow (130 ms for 4096x4096 on an H100) and a radix sort is much faster. The
  // threshold stays a 0-dim tensor on the device: no host synchronisation.
  const at::Tensor threshold =
      flat.is_cpu() ? std::get<0>(at::kthvalue(flat, k + 1)) : std::get<0>(at::sort(flat)).select(0, k);
  return scores <= threshold;
}

at::Tensor per_row_mask(const at::Tensor& scores, double sparsity) {
  const int64_t k = threshold_index(scores.size(1), sparsity);
  at::Tensor mask = at::zeros(scores.sizes(), scores.options().dtype(at::kBool));
  if (k == 0) return mask;
  const at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/1, /*descending=*/false));
  return mask.scatter_(1, order.narrow(1, 0, k), true);
}

at::Tensor n_m_mask(const at::Tensor& scores, int64_t n, int64_t m) {
  const int64_t rows = scores.size(0);
  const int64_t cols = scores.size(1);
  OPTIMA_ASSERT(m > 0 && n > 0 && n < m && cols % m == 0);
  // All groups of all rows at once: [rows, groups, m], the n lowest of each group along the last dimension.
  const at::Tensor grouped = scores.reshape({rows, cols / m, m});
  const at::Tensor lowest = std::get<1>(at::topk(grouped, n, /*dim=*/2, /*largest=*/false, /*sorted=*/false));
  at::Tensor mask = at::zeros(grouped.sizes(), scores.options().dtype(at::kBool));
  mask.scatter_(2, lowest, true);
  return mask.reshape({rows, cols});
}

at::ScalarType compute_dtype(const at::Tensor& weight) {
  return weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_weight(const at::Tensor& weight, std::string_view who) {
  if (!weight.defined()) fail(ErrorKind::kInternal, who, "no weight tensor was given");
  if (weight.dim() != 2)
    fail_input(who, "the weight must be a matrix", "2 dimensions [out, in]", std::to_string(weight.dim()));
  if (!weight.is_floating_point())
    fail_input(who, "the weight must hold real numbers", "a floating-point type",
               std::string(c10::toString(weight.scalar_type())));
  if (weight.numel() == 0)
    fail_input(who, "the weight is empty", "out, in > 0", fmt::format("[{}, {}]", weight.size(0), weight.size(1)));
}

void check_finite(const at::Tensor& tensor, std::string_view who, std::string_view what) {
  if (!all_finite(tensor)) fail(ErrorKind::kNumeric, who, fmt::format("{} has NaN or infinite entries", what));
}

// Each selector's factory lives in its own file; its line in the table below is all that registers it.
std::unique_ptr<MaskSelector> make_magnitude_selector(const SelectorSettings& settings);
std::unique_ptr<MaskSelector> make_wanda_selector(const SelectorSettings& settings);
std::unique_ptr<MaskSelector> make_sparsegpt_selector(const SelectorSettings& settings);
void check_sparsegpt_settings(const SelectorSettings& settings, const SparsityPattern& target);
std::unique_ptr<MaskSelector> make_thanos_selector(const SelectorSettings& settings);
void check_thanos_settings(const SelectorSettings& settings, const SparsityPattern& target);
std::unique_ptr<MaskSelector> make_admm_selector(const SelectorSettings& settings);
std::unique_ptr<MaskSelector> make_mask_file_selector(const SelectorSettings& settings);
void check_mask_file_settings(const SelectorSettings& settings, const SparsityPattern& target);

namespace {

constexpr SelectorInfo kSelectors[] = {
    {"magnitude", "|W|, one threshold per matrix (no calibration)", SelectorInputs::kNone, make_magnitude_selector},
    {"wanda", "|W|·‖X_j‖ per output row", SelectorInputs::kNorms, make_wanda_selector},
    {"sparsegpt", "OBS updates in column blocks", SelectorInputs::kHessian, make_sparsegpt_selector,
     check_sparsegpt_settings},
    {"thanos", "OBS row updates with the trailing inverse, mask re-chosen per block", SelectorInputs::kHessian,
     make_thanos_selector, check_thanos_settings},
    {"admm", "ADMM weight update, mask re-chosen in early iterations; damping fixed at 0.1", SelectorInputs::kHessian,
     make_admm_selector},
    {"masks", "each layer's mask read from --masks FILE (optima's masks.safetensors, or a pruned checkpoint's zeros)",
     SelectorInputs::kNone, make_mask_file_selector, check_mask_file_settings, /*reads_masks=*/true},
};

void check_run_settings(const SelectorSettings& settings) {
  if (!(settings.percdamp >= 0.0 && settings.percdamp < 1e30))
    fail_usage(fmt::format("percdamp must be a finite non-negative fraction of mean(diag H) (expected >= 0, found {})",
                           settings.percdamp));
  if (settings.blocksize < 1)
    fail_usage(fmt::format("blocksize must be positive (expected >= 1, found {})", settings.blocksize));
}

}  // namespace

std::span<const SelectorInfo> selector_table() {
  return kSelectors;
}

std::string selector_names(std::string_view separator) {
  std::string out;
  for (const SelectorInfo& info : kSelectors)
    out += (out.empty() ? "" : std::string(separator)) + std::string(info.name);
  return out;
}

const SelectorInfo& find_selector(std::string_view name) {
  for (const SelectorInfo& info : kSelectors)
    if (info.name == name) return info;
  fail_usage(fmt::format("unknown selector '{}' (expected one of {})", name, selector_names()));
}

void check_selector_settings(std::string_view name, const SelectorSettings& settings, const SparsityPattern& target) {
  const SelectorInfo& info = find_selector(name);
  check_run_settings(settings);
  if (info.check) info.check(settings, target);
}

std::unique_ptr<MaskSelector> make_selector(std::string_view name, const SelectorSettings& settings) {
  const SelectorInfo& info = find_selector(name);
  check_run_settings(settings);
  return info.make(settings);
}

}  // namespace optima
