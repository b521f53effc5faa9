// The calibration windows of a pruning run, read once: a sweep reads them for all its settings, and a single run
// reads them itself.
#pragma once

#include <cstdint>
#include <string>

#include "optima/prune/plan.h"
#include "optima/text/calibration.h"

namespace optima {

class Checkpoint;
struct ModelShape;

// The window length a plan calibrates with on a model of `max_positions` positions: plan.seqlen, or by default
// kDefaultSeqlen capped at the model's positions. Usage error when an explicit plan.seqlen exceeds them.
int64_t calibration_seqlen(const PrunePlan& plan, int64_t max_positions, const std::string& config_path);

// plan.nsamples windows of `seqlen` tokens from plan.calib, tokenized by the model's tokenizer (or plan.tokenizer),
// drawn with plan.seed. Without plan.calib: an empty set whose description says so.
CalibrationSet load_plan_calibration(const PrunePlan& plan, const Checkpoint& checkpoint, const ModelShape& shape,
                                     int64_t seqlen);

}  // namespace optima
