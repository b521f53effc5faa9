// The pruning pipeline: calibration windows flow through the model block by block; in each block the input
// statistics of every linear site are accumulated, every prunable linear layer gets a mask (and new weights) from
// the selector, and the pruned block produces the inputs of the next one. Only one block's weights, the
// calibration activations and one block's statistics are in memory at a time. The pruned checkpoint, the report
// and optional masks / Hessians are written under temporary names and renamed at the end (prune/output.h).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "optima/core/progress.h"
#include "optima/dist/distributed.h"
#include "optima/prune/plan.h"
#include "optima/prune/report.h"

namespace optima {

struct CalibrationSet;

// Runs the whole pipeline and writes plan.out (and plan.save_hessians). Throws optima::Error. `calibration`, when
// given, is used instead of reading plan.calib (a sweep reads and tokenizes it once for all its settings); it must
// have been built from plan.calib with plan.nsamples windows of calibration_seqlen(plan, ...) tokens.
// In a job of many processes (`dist`, called by every process with the same plan) each process runs its share of
// the calibration windows and of the reconstruction rows (prune/distributed_steps.h); only rank 0 writes, and every
// process returns only once rank 0 has written. A signal to any process stops them all at the end of the same block,
// each saving its share of the activations in the work folder (prune/resume.h), and --resume continues the job with
// as many processes.
PruneReport prune_model(const PrunePlan& plan, ProgressSink& progress, const CalibrationSet* calibration = nullptr,
                        const Distributed& dist = Distributed::single_process());

}  // namespace optima
