// The resolved settings of one pruning run (defaults < config file < command line), and their checks.
// Every default comes from core/defaults.h; enum settings are parsed once, at the edge, with the tables below.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "optima/core/defaults.h"
#include "optima/core/enum_names.h"
#include "optima/select/pattern.h"
#include "optima/select/selector.h"
#include "optima/solve/row_solver.h"
#include "optima/text/calibration.h"

namespace optima {

enum class Propagation {
  kReference,       // every sublayer's statistics come from the dense block's inputs (SparseGPT, Wanda, OPTIMA)
  kTrueSequential,  // q/k/v, then o, then gate/up (fc1), then down (fc2): each group sees the pruned earlier ones
};
// After selection: nothing, or OPTIMA's exact per-row reconstruction.
enum class Reconstruct { kNone, kOptima };
// OPTIMA's solver: batched Cholesky factorizations, or conjugate gradients on all rows at once (huge layers).
// auto: per layer, the solver predicted cheaper (predict_solver_cost in solve/row_solver.h).
enum class QpSolver { kAuto, kExact, kIterative };
// The dtype H and Wanda's statistic are accumulated in: fp32 as the reference, or fp64.
enum class StatsDtype { kFloat32, kFloat64 };
// How the target sparsity is shared among the decoder blocks: the same everywhere, or OWL's outlier-weighted
// per-block sparsities from a pass over the dense model (prune/allocation.h; unstructured patterns only).
enum class SparsityAllocation { kUniform, kOwl };

struct PrunePlan {
  std::filesystem::path model;
  std::filesystem::path out;
  std::filesystem::path calib;
  std::filesystem::path tokenizer;   // empty: the model directory
  std::string method = "sparsegpt";  // a selector of select/selector.h's table
  std::filesystem::path masks;       // --method masks: the file holding every layer's mask
  SparsityPattern pattern;
  int64_t nsamples = kDefaultNsamples;
  int64_t seqlen = 0;  // 0: kDefaultSeqlen, capped at the model's positions (an explicit value is never capped)
  uint64_t seed = kDefaultSeed;
  CalibRule calib_rule = parse_calib_rule(kDefaultCalibRule);  // text calibration: which sampling rule
  double percdamp = kDefaultPercdamp;
  int64_t blocksize = kDefaultBlocksize;
  Propagation propagation = Propagation::kReference;
  SparsityAllocation allocation = SparsityAllocation::kUniform;
  double owl_lambda = kDefaultOwlLambda;        // OWL: half the spread of the block sparsities
  double owl_threshold = kDefaultOwlThreshold;  // OWL: M, an outlier scores above M × its block's mean score
  std::string device = "cpu";
  std::string dtype;  // compute dtype for the forward pass; empty: the checkpoint's
  std::string skip;   // regex of linear layer names left dense
  Reconstruct reconstruct = Reconstruct::kNone;
  double qp_damp = kDefaultRowSolveDamp;  // OPTIMA solve: relative damping (solve/row_solver.h says why)
  // "fp32": fp32 factorizations refined against fp64 residuals to the same KKT tolerance as "fp64" (chunks fp32
  // cannot hold are solved again in fp64), 30-40% faster on CPU (bench/solver_cpu.json); "fp64": everything in fp64.
  SolvePrecision qp_precision = SolvePrecision::kFloat32Refined;
  std::string qp_memory = std::string(kDefaultQpMemory);  // memory budget of one chunk of gathered systems
  QpSolver qp_solver = QpSolver::kAuto;
  double qp_tol = kDefaultQpTolerance;            // iterative: relative KKT residual at which every row stops
  int64_t qp_max_iter = kDefaultQpMaxIterations;  // iterative: iteration budget per layer
  StatsDtype hessian_dtype = StatsDtype::kFloat32;
  int64_t batch_size =
      kDefaultBatchSize;  // calibration windows per forward call (0: forward_batch_size(), prune/block_runner.h)
  std::string max_shard_size = std::string(kDefaultMaxShardSize);
  bool save_masks = false;
  std::filesystem::path save_hessians;  // empty: do not save
  bool overwrite = false;
  bool allow_non_finite = false;
  bool resume = false;                     // continue from <out>.resume when it holds a saved state
  std::string activation_memory = "auto";  // budget of the in-memory calibration activations (else mapped on disk)

  // Checks values that do not need the model (ranges, names); usage errors say expected vs found.
  void validate() const;
  nlohmann::json to_json() const;
  // The run-wide settings of the selector.
  SelectorSettings selector_settings() const;

 private:
  void validate_allocation() const;
};

// The names of each setting's values, as the command line, config files and reports spell them.
inline constexpr EnumName<Propagation> kPropagationNames[] = {{Propagation::kReference, "reference"},
                                                              {Propagation::kTrueSequential, "true-sequential"},
                                                              {Propagation::kTrueSequential, "sequential", true}};
inline constexpr EnumName<Reconstruct> kReconstructNames[] = {{Reconstruct::kNone, "none"},
                                                              {Reconstruct::kOptima, "optima"}};
inline constexpr EnumName<QpSolver> kQpSolverNames[] = {{QpSolver::kAuto, "auto"},
                                                        {QpSolver::kExact, "exact"},
                                                        {QpSolver::kIterative, "iterative"},
                                                        {QpSolver::kIterative, "cg", /*alias=*/true}};
inline constexpr EnumName<SolvePrecision> kQpPrecisionNames[] = {{SolvePrecision::kFloat64, "fp64"},
                                                                 {SolvePrecision::kFloat32Refined, "fp32"}};
inline constexpr EnumName<SparsityAllocation> kAllocationNames[] = {{SparsityAllocation::kUniform, "uniform"},
                                                                    {SparsityAllocation::kOwl, "owl"}};
inline constexpr EnumName<StatsDtype> kStatsDtypeNames[] = {{StatsDtype::kFloat32, "fp32"},
                                                            {StatsDtype::kFloat64, "fp64"}};

inline std::string_view to_string(Propagation v) {
  return enum_name<Propagation>(kPropagationNames, v);
}
inline std::string_view to_string(Reconstruct v) {
  return enum_name<Reconstruct>(kReconstructNames, v);
}
inline std::string_view to_string(QpSolver v) {
  return enum_name<QpSolver>(kQpSolverNames, v);
}
inline std::string_view to_string(SolvePrecision v) {
  return enum_name<SolvePrecision>(kQpPrecisionNames, v);
}
inline std::string_view to_string(StatsDtype v) {
  return enum_name<StatsDtype>(kStatsDtypeNames, v);
}
inline std::string_view to_string(SparsityAllocation v) {
  return enum_name<SparsityAllocation>(kAllocationNames, v);
}
inline SparsityAllocation parse_allocation(std::string_view text) {
  return parse_enum<SparsityAllocation>(kAllocationNames, text, "--sparsity-allocation");
}
inline Propagation parse_propagation(std::string_view text) {
  return parse_enum<Propagation>(kPropagationNames, text, "propagation mode");
}
inline Reconstruct parse_reconstruct(std::string_view text) {
  return parse_enum<Reconstruct>(kReconstructNames, text, "--reconstruct");
}
inline QpSolver parse_qp_solver(std::string_view text) {
  return parse_enum<QpSolver>(kQpSolverNames, text, "--qp-solver");
}
inline SolvePrecision parse_qp_precision(std::string_view text) {
  return parse_enum<SolvePrecision>(kQpPrecisionNames, text, "--qp-precision");
}
inline StatsDtype parse_stats_dtype(std::string_view text) {
  return parse_enum<StatsDtype>(kStatsDtypeNames, text, "--hessian-dtype");
}

}  // namespace optima
