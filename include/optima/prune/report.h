// What a pruning run reports: one row per linear layer (sparsity, pattern check, errors, solver figures, time) and
// the run's totals, as prune_report.json and as a table for people. The JSON form is read back when a run resumes.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace optima {

struct LayerReport {
  std::string name;  // e.g. "model.layers.3.mlp.down_proj"
  int64_t block = 0;
  std::string site;  // input site shared with other layers ("attn_in", ...)
  std::vector<int64_t> shape;
  bool skipped = false;        // left dense by --skip (or --allow-non-finite)
  double sparsity = 0;         // achieved fraction of zeros
  double target_sparsity = 0;  // the target the selector was given (per block under OWL)
  bool pattern_ok = false;     // N:M groups all have N zeros / unstructured fraction as requested
  double error_selector = 0;   // ||(W - W_sel) X||² / ||W X||² on the calibration data
  double error_final = 0;      // the same for the written weights (after reconstruction, if any)
  // Reconstruction only: max_r ||(H(ŵ - w))_T|| / ||(H w)_T|| with H the matrix solved, damped by
  // reconstruct_damping (0 unless H, or some row's H_TT, is singular: both solvers then keep --qp-damp there) ...
  double kkt_residual = -1;
  double kkt_residual_undamped = -1;  // ... and the same with the undamped H: the problem as stated
  std::string qp_solver;              // "exact" or "iterative": the solver the layer used
  double damping = 0;                 // damping added to diag(H) by the selector (SparseGPT)
  int64_t damping_retries = 0;
  double reconstruct_damping = 0;
  int64_t qp_fp64_fallback_rows = 0;        // fp32 solves: rows solved in fp64 after an fp32 attempt failed
  bool qp_fp64_predicted = false;           // fp32 asked, but H's condition estimate sent the layer to fp64 directly
  double qp_condition_estimate = 0;         // (max/min diagonal of the Cholesky factor of the damped H)², of
                                            // H's inputs in the masked Cholesky's order where that runs
  std::string qp_input_order;               // iterative solver: that order, "by_correlation" or "by_pruned_share"
                                            // (empty: the inputs' own)
  double qp_predicted_exact_units = 0;      // --qp-solver auto: predicted cost of each solver, in products
  double qp_predicted_iterative_units = 0;  // [rows, n] x [n, n] (0 when not predicted)
  int64_t qp_chunks = 0;                    // exact solver: batches of gathered systems
  int64_t qp_iterations = 0;                // iterative solver only
  int64_t qp_abandoned_iterations = 0;      // auto: iterations of a CG given up for the exact solver (0: none)
  int64_t qp_pruned_space_rounds = 0;       // iterative solver: its correction rounds in the pruned space
  bool qp_converged = true;                 // iterative solver only: every row reached --qp-tol
  double seconds_select = 0;
  double seconds_reconstruct = 0;

  bool reconstructed() const { return kkt_residual >= 0; }
  nlohmann::json to_json() const;
  static LayerReport from_json(const nlohmann::json& j);
};

// Wall time of the run's phases, in seconds.
struct RunTimings {
  double total = 0;
  double calibration = 0;
  double forward = 0;
  double select = 0;
  double reconstruct = 0;
  double write = 0;
  double communicate = 0;  // inside collectives of a job of many processes, waiting included
};

struct PruneReport {
  nlohmann::json settings;
  std::string calibration;                                         // which sampling rule ran, on what
  nlohmann::json calibration_sampling = nlohmann::json::object();  // the rule: asked for, used, why, the counts
  // Content hashes of the run's identity (resume.h's run_fingerprint): settings, model weights and calibration
  // tokens; `optima check` compares them to tell a comparable run from another setup.
  nlohmann::json fingerprint = nlohmann::json::object();
  std::string model_type;
  int64_t num_layers = 0;
  std::vector<LayerReport> layers;
  double overall_sparsity = 0;  // zeros over all prunable weights
  nlohmann::json allocation;    // how the target was shared among blocks (prune/allocation.h)
  RunTimings seconds;
  int64_t peak_rss_bytes = 0;
  int64_t activation_bytes = 0;      // calibration activations between blocks
  bool activations_on_disk = false;  // mapped from the work folder (--activation-memory)
  int64_t resumed_from_block = -1;   // -1: not resumed
  double seconds_before_resume = 0;  // time the interrupted runs took (included in seconds.total)

  // Sets overall_sparsity from the layers' rows.
  void total_sparsity();
  nlohmann::json to_json() const;
  // A table for people: one row per layer and a total.
  std::string summary() const;
};

}  // namespace optima
