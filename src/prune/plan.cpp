// Pruning settings: validation and JSON form for the report.
#include "optima/prune/plan.h"

#include <regex>

#include "optima/core/error.h"
#include "optima/io/checkpoint_writer.h"
#include "optima/select/selector.h"

namespace optima {

std::string to_string(Propagation propagation) {
  return propagation == Propagation::kReference ? "reference" : "true-sequential";
}

Propagation parse_propagation(std::string_view name) {
  if (name == "reference") return Propagation::kReference;
  if (name == "true-sequential" || name == "sequential") return Propagation::kTrueSequential;
  fail_usage(fmt::format("unknown propagation mode '{}' (expected reference or true-sequential)", name));
}

void PrunePlan::validate() const {
  if (model.empty()) fail_usage("no model directory given (--model)");
  if (out.empty()) fail_usage("no output directory given (--out)");
  if (activation_memory != "auto" && activation_memory != "none") (void)parse_byte_size(activation_memory);
  if (calib.empty() && method != "magnitude")
    fail_usage(fmt::format("method {} needs calibration data (--calib FILE)", method));
  bool known = false;
  for (std::string_view name : kSelectorNames) known = known || name == method;
  if (!known) fail_usage(fmt::format("unknown method '{}' (expected magnitude, wanda or sparsegpt)", method));
  if (nsamples <= 0) fail_usage(fmt::format("--nsamples must be positive (got {})", nsamples));
  if (seqlen < 0 || seqlen == 1) fail_usage(fmt::format("--seqlen must be at least 2 (got {})", seqlen));
  if (percdamp < 0) fail_usage(fmt::format("--percdamp must be >= 0 (got {})", percdamp));
  if (blocksize <= 0) fail_usage(fmt::format("--blocksize must be positive (got {})", blocksize));
  if (batch_size <= 0) fail_usage(fmt::format("--batch-size must be positive (got {})", batch_size));
  if (reconstruct != "none" && reconstruct != "optima")
    fail_usage(fmt::format("unknown --reconstruct '{}' (expected none or optima)", reconstruct));
  if (qp_damp < 0) fail_usage(fmt::format("--qp-damp must be >= 0 (got {})", qp_damp));
  if (qp_solver != "exact" && qp_solver != "cg")
    fail_usage(fmt::format("unknown --qp-solver '{}' (expected exact or cg)", qp_solver));
  if (!(qp_tol > 0) || qp_tol >= 1) fail_usage(fmt::format("--qp-tol must be in (0, 1) (got {})", qp_tol));
  if (qp_max_iter <= 0) fail_usage(fmt::format("--qp-max-iter must be positive (got {})", qp_max_iter));
  if (hessian_dtype != "fp32" && hessian_dtype != "fp64")
    fail_usage(fmt::format("unknown --hessian-dtype '{}' (expected fp32 or fp64)", hessian_dtype));
  if (qp_precision != "fp64" && qp_precision != "fp32")
    fail_usage(fmt::format("unknown --qp-precision '{}' (expected fp64 or fp32)", qp_precision));
  if (!skip.empty()) {
    try {
      std::regex check(skip);
    } catch (const std::regex_error& e) {
      fail_usage(fmt::format("--skip '{}' is not a valid regular expression: {}", skip, e.what()));
    }
  }
}

nlohmann::json PrunePlan::to_json() const {
  return {{"model", model.string()},
          {"out", out.string()},
          {"calib", calib.string()},
          {"tokenizer", tokenizer.empty() ? model.string() : tokenizer.string()},
          {"method", method},
          {"pattern", pattern.name()},
          {"sparsity", pattern.sparsity()},
          {"nsamples", nsamples},
          {"seqlen", seqlen},
          {"seed", seed},
          {"percdamp", percdamp},
          {"blocksize", blocksize},
          {"propagation", to_string(propagation)},
          {"reconstruct", reconstruct},
          {"qp_damp", qp_damp},
          {"qp_precision", qp_precision},
          {"qp_memory", qp_memory},
          {"qp_solver", qp_solver},
          {"qp_tol", qp_tol},
          {"qp_max_iter", qp_max_iter},
          {"hessian_dtype", hessian_dtype},
          {"device", device},
          {"dtype", dtype.empty() ? "checkpoint" : dtype},
          {"skip", skip},
          {"batch_size", batch_size},
          {"activation_memory", activation_memory}};
}

}  // namespace optima
