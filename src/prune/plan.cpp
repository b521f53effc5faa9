// Pruning settings: validation and JSON form for the report.
#include "optima/prune/plan.h"

#include <cmath>
#include <regex>

#include "optima/core/byte_size.h"
#include "optima/core/error.h"
#include "optima/io/tensor.h"
#include "optima/select/selector.h"

namespace optima {

void PrunePlan::validate() const {
  if (model.empty()) fail_usage("no model directory given (--model)");
  if (out.empty()) fail_usage("no output directory given (--out)");
  if (activation_memory != "auto" && activation_memory != "none") (void)parse_byte_size(activation_memory);
  if (calib.empty() && find_selector(method).needs_calibration())
    fail_usage(fmt::format("method {} needs calibration data (--calib FILE)", method));
  if (calib.empty() && reconstruct == Reconstruct::kOptima)
    fail_usage("--reconstruct optima needs calibration data (--calib FILE): it solves against the Hessian");
  if (nsamples <= 0) fail_usage(fmt::format("--nsamples must be positive (got {})", nsamples));
  if (seqlen < 0 || seqlen == 1) fail_usage(fmt::format("--seqlen must be at least 2 (got {})", seqlen));
  if (percdamp < 0) fail_usage(fmt::format("--percdamp must be >= 0 (got {})", percdamp));
  if (blocksize <= 0) fail_usage(fmt::format("--blocksize must be positive (got {})", blocksize));
  if (batch_size < 0)
    fail_usage(fmt::format("--batch-size must be positive, or 0 for the memory budget's (got {})", batch_size));
  if (qp_damp < 0) fail_usage(fmt::format("--qp-damp must be >= 0 (got {})", qp_damp));
  if (!(qp_tol > 0) || qp_tol >= 1) fail_usage(fmt::format("--qp-tol must be in (0, 1) (got {})", qp_tol));
  if (qp_max_iter <= 0) fail_usage(fmt::format("--qp-max-iter must be positive (got {})", qp_max_iter));
  (void)parse_device(device);
  if (!dtype.empty()) (void)parse_float_dtype(dtype);
  (void)parse_byte_size(qp_memory);
  (void)parse_byte_size(max_shard_size);
  check_selector_settings(method, selector_settings(), pattern);
  if (!masks.empty() && !find_selector(method).reads_masks)
    fail_usage(fmt::format("--masks is read by --method masks only (the method is {})", method));
  if (allocation != SparsityAllocation::kUniform) validate_allocation();
  if (!skip.empty()) {
    try {
      std::regex check(skip);
    } catch (const std::regex_error& e) {
      fail_usage(fmt::format("--skip '{}' is not a valid regular expression: {}", skip, e.what()));
    }
  }
}

// OWL shares an unstructured target among blocks; it needs the dense model's activations and keeps every block's
// sparsity in (0, 1) whatever the outlier ratios: s_ℓ <= target + mean D' < target + 2·lambda.
void PrunePlan::validate_allocation() const {
  const std::string_view name = to_string(allocation);
  if (pattern.is_n_m())
    fail_usage(
        fmt::format("--sparsity-allocation {} shares an unstructured sparsity among the blocks; an {} pattern "
                    "fixes every group's zeros, so there is nothing to share (use --pattern unstructured, "
                    "or --sparsity-allocation uniform)",
                    name, pattern.name()));
  if (find_selector(method).reads_masks)
    fail_usage(
        fmt::format("--sparsity-allocation {} chooses per-block sparsities, but --method {} takes every "
                    "mask from a file as it is (use --sparsity-allocation uniform)",
                    name, method));
  if (calib.empty())
    fail_usage(
        fmt::format("--sparsity-allocation {} needs calibration data (--calib FILE): it measures outliers "
                    "with Wanda's activation statistic on the dense model",
                    name));
  if (!(std::isfinite(owl_threshold) && owl_threshold > 0))
    fail_usage(
        fmt::format("--owl-threshold must be a positive multiple of the block's mean score (expected > 0, "
                    "found {})",
                    owl_threshold));
  if (!(std::isfinite(owl_lambda) && owl_lambda >= 0 && pattern.sparsity() + 2 * owl_lambda < 1))
    fail_usage(
        fmt::format("--owl-lambda must be >= 0 with sparsity + 2·lambda < 1, so that no block's sparsity "
                    "can reach 1 (expected 0 <= lambda < {:g} at sparsity {:g}, found {:g})",
                    (1 - pattern.sparsity()) / 2, pattern.sparsity(), owl_lambda));
}

SelectorSettings PrunePlan::selector_settings() const {
  SelectorSettings s;
  s.percdamp = percdamp;
  s.blocksize = blocksize;
  s.masks = masks;
  return s;
}

nlohmann::json PrunePlan::to_json() const {
  return {{"model", model.string()},
          {"out", out.string()},
          {"calib", calib.string()},
          {"tokenizer", tokenizer.empty() ? model.string() : tokenizer.string()},
          {"method", method},
          {"masks", masks.string()},
          {"sparsity_allocation", std::string(to_string(allocation))},
          {"owl_lambda", owl_lambda},
          {"owl_threshold", owl_threshold},
          {"pattern", pattern.name()},
          {"sparsity", pattern.sparsity()},
          {"nsamples", nsamples},
          {"seqlen", seqlen},
          {"seed", seed},
          {"calib_rule", std::string(to_string(calib_rule))},
          {"percdamp", percdamp},
          {"blocksize", blocksize},
          {"propagation", std::string(to_string(propagation))},
          {"reconstruct", std::string(to_string(reconstruct))},
          {"qp_damp", qp_damp},
          {"qp_precision", std::string(to_string(qp_precision))},
          {"qp_memory", qp_memory},
          {"qp_solver", std::string(to_string(qp_solver))},
          {"qp_tol", qp_tol},
          {"qp_max_iter", qp_max_iter},
          {"hessian_dtype", std::string(to_string(hessian_dtype))},
          {"device", device},
          {"dtype", dtype.empty() ? "checkpoint" : dtype},
          {"skip", skip},
          {"batch_size", batch_size},
          {"activation_memory", activation_memory}};
}

}  // namespace optima
