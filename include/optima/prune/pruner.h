// The pruning pipeline: calibration windows flow through the model block by block; in each block the input
// statistics of every linear site are accumulated, every prunable linear layer gets a mask (and new weights) from
// the selector, and the pruned block produces the inputs of the next one. Only one block's weights, the
// calibration activations and one block's statistics are in memory at a time. The pruned checkpoint, the report
// and optional masks / Hessians are written under temporary names and renamed at the end.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "optima/core/progress.h"
#include "optima/dist/distributed.h"
#include "optima/prune/plan.h"

namespace optima {

struct LayerReport {
  std::string name;  // e.g. "model.layers.3.mlp.down_proj"
  int64_t block = 0;
  std::string site;  // input site shared with other layers ("attn_in", ...)
  std::vector<int64_t> shape;
  bool skipped = false;       // left dense by --skip
  double sparsity = 0;        // achieved fraction of zeros
  bool pattern_ok = false;    // N:M groups all have N zeros / unstructured fraction as requested
  double error_selector = 0;  // ||(W - W_sel) X||² / ||W X||² on the calibration data
  double error_final = 0;     // the same for the written weights (after reconstruction, if any)
  double kkt_residual = -1;   // reconstruction only: max_r ||(H(ŵ - w))_T|| / ||(H w)_T||
  double damping = 0;         // damping added to diag(H) by the selector (SparseGPT)
  int64_t damping_retries = 0;
  double reconstruct_damping = 0;
  int64_t qp_fp64_fallback_rows = 0;  // fp32 solves: rows that had to be solved again in fp64
  int64_t qp_chunks = 0;              // exact solver: batches of gathered systems
  int64_t qp_iterations = 0;          // cg only
  bool qp_converged = true;           // cg only: every row reached --qp-tol
  double seconds_select = 0;
  double seconds_reconstruct = 0;
};

struct PruneReport {
  nlohmann::json settings;
  std::string calibration;  // which sampling rule ran, on what
  std::string model_type;
  int64_t num_layers = 0;
  std::vector<LayerReport> layers;
  double overall_sparsity = 0;  // zeros over all prunable weights
  double seconds_total = 0;
  double seconds_calibration = 0;
  double seconds_forward = 0;
  double seconds_select = 0;
  double seconds_reconstruct = 0;
  double seconds_write = 0;
  double seconds_communicate = 0;  // inside collectives of a job of many processes, waiting included
  int64_t peak_rss_bytes = 0;
  int64_t activation_bytes = 0;      // calibration activations between blocks
  bool activations_on_disk = false;  // mapped from the work folder (--activation-memory)
  int64_t resumed_from_block = -1;   // -1: not resumed
  double seconds_before_resume = 0;  // time the interrupted runs took (included in seconds_total)

  nlohmann::json to_json() const;
  // A table for people: one row per layer and a total.
  std::string summary() const;
};

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

// The window length a plan calibrates with on a model of `max_positions` positions: plan.seqlen, or by default
// kDefaultSeqlen capped at the model's positions. Usage error when an explicit plan.seqlen exceeds them.
int64_t calibration_seqlen(const PrunePlan& plan, int64_t max_positions, const std::string& config_path);

}  // namespace optima
