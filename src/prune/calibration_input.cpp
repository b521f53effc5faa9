// Reading a pruning run's calibration windows (see calibration_input.h).
#include "optima/prune/calibration_input.h"

#include <algorithm>

#include "optima/core/error.h"
#include "optima/io/checkpoint.h"
#include "optima/model/arch.h"
#include "optima/text/tokenizer.h"

namespace optima {

int64_t calibration_seqlen(const PrunePlan& plan, int64_t max_positions, const std::string& config_path) {
  if (plan.seqlen > max_positions)
    fail_usage(fmt::format("--seqlen {} exceeds the model's {} positions (max_position_embeddings in {})", plan.seqlen,
                           max_positions, config_path));
  return plan.seqlen > 0 ? plan.seqlen : std::min(kDefaultSeqlen, max_positions);
}

CalibrationSet load_plan_calibration(const PrunePlan& plan, const Checkpoint& checkpoint, const ModelShape& shape,
                                     int64_t seqlen) {
  if (plan.calib.empty()) {
    CalibrationSet none;
    none.rule = "none";
    none.description = "no calibration data (magnitude pruning needs none; errors are not measured)";
    return none;
  }
  const auto tokenizer = load_model_tokenizer(plan.model, plan.tokenizer, shape.vocab_size, checkpoint.config().path());
  return load_calibration(plan.calib, *tokenizer, {plan.nsamples, seqlen, plan.seed, plan.calib_rule});
}

}  // namespace optima
