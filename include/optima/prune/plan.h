// The resolved settings of one pruning run (defaults < config file < command line), and their checks.
// Protocol defaults live here and nowhere else.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "optima/select/pattern.h"
#include "optima/solve/row_solver.h"

namespace optima {

// The field's published protocol.
inline constexpr int64_t kDefaultNsamples = 128;
inline constexpr int64_t kDefaultSeqlen = 2048;
inline constexpr uint64_t kDefaultSeed = 0;
inline constexpr double kDefaultPercdamp = 0.01;
inline constexpr int64_t kDefaultBlocksize = 128;

enum class Propagation {
  kReference,       // every sublayer's statistics come from the dense block's inputs (SparseGPT, Wanda, OPTIMA)
  kTrueSequential,  // q/k/v, then o, then gate/up (fc1), then down (fc2): each group sees the pruned earlier ones
};

struct PrunePlan {
  std::filesystem::path model;
  std::filesystem::path out;
  std::filesystem::path calib;
  std::filesystem::path tokenizer;  // empty: the model directory
  std::string method = "sparsegpt";
  SparsityPattern pattern;
  int64_t nsamples = kDefaultNsamples;
  int64_t seqlen = 0;  // 0: kDefaultSeqlen, capped at the model's positions (an explicit value is never capped)
  uint64_t seed = kDefaultSeed;
  double percdamp = kDefaultPercdamp;
  int64_t blocksize = kDefaultBlocksize;
  Propagation propagation = Propagation::kReference;
  std::string device = "cpu";
  std::string dtype;                      // compute dtype for the forward pass; empty: the checkpoint's
  std::string skip;                       // regex of linear layer names left dense
  std::string reconstruct = "none";       // "none" or "optima"
  double qp_damp = kDefaultRowSolveDamp;  // OPTIMA solve: relative damping (solve/row_solver.h says why)
  // "fp32": fp32 factorizations refined against fp64 residuals to the same KKT tolerance as "fp64" (chunks fp32
  // cannot hold are solved again in fp64), 30-40% faster on CPU (bench/solver_cpu.json); "fp64": everything in fp64.
  std::string qp_precision = "fp32";
  std::string qp_memory = "1GiB";      // memory budget of one chunk of gathered systems
  std::string qp_solver = "exact";     // "exact" (batched Cholesky) or "cg" (conjugate gradients, for huge layers)
  double qp_tol = 1e-6;                // cg: relative KKT residual at which every row stops
  int64_t qp_max_iter = 2000;          // cg: iteration budget per layer
  std::string hessian_dtype = "fp32";  // accumulation dtype of H and Wanda's statistic: fp32 (reference) or fp64
  int64_t batch_size = 1;              // calibration samples per forward call
  std::string max_shard_size = "5GB";
  bool save_masks = false;
  std::filesystem::path save_hessians;  // empty: do not save
  bool overwrite = false;
  bool allow_non_finite = false;
  bool resume = false;                     // continue from <out>.resume when it holds a saved state
  std::string activation_memory = "auto";  // budget of the in-memory calibration activations (else mapped on disk)

  // Checks values that do not need the model (ranges, names); usage errors say expected vs found.
  void validate() const;
  nlohmann::json to_json() const;
};

std::string to_string(Propagation propagation);
Propagation parse_propagation(std::string_view name);

}  // namespace optima
