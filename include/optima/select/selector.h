// Mask selectors: given a linear layer's weight, the statistics of its input and the layer's target (a sparsity or
// an N:M pattern), choose which weights to zero, following the reference implementations exactly (docs:
// algorithms.md §5).
//
// Selectors are registered in one table (selector_table(), src/select/selector.cpp): its name, what statistics it
// reads, its help text and its factory. Validation, the command line's allowed values and help, sweeps and tests
// all read that table; adding a selector is one file defining its factory plus one line there.
//
// Selectors are device-generic: the same ATen code runs on CPU and CUDA tensors, and results come back on the
// weight's device. They compute in fp32 as the reference code does, except that float64 weights are processed in
// float64 (used by the tests to check against float64 references at tight tolerances).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "optima/core/defaults.h"
#include "optima/select/pattern.h"

namespace optima {

// What the pipeline accumulated for one layer's input, and which layer it is.
struct LayerStats {
  at::Tensor hessian;      // [in, in] fp32 (or fp64): H = (2/n) sum x x^T, SparseGPT's scaling; may be undefined
  at::Tensor act_sq_norm;  // [in] fp32: Wanda's running mean of squared column norms; may be undefined
  std::string layer{};     // the layer's tensor name without ".weight" ("model.layers.3.mlp.down_proj"); may be empty
};

// Settings a selector keeps for a whole run; the target of each layer is passed to select().
struct SelectorSettings {
  double percdamp = kDefaultPercdamp;     // SparseGPT: damping added to diag(H), as a fraction of mean(diag H)
  int64_t blocksize = kDefaultBlocksize;  // SparseGPT: columns per lazy-update block
  std::filesystem::path masks{};          // masks: the file every layer's mask is read from
};

struct Selection {
  at::Tensor pruned;            // bool [out, in], true where the weight is zeroed
  at::Tensor weight;            // output weights (fp32; fp64 for fp64 input): W with pruned entries 0, or
                                // SparseGPT's OBS-updated W (pruned entries exactly 0)
  double damping = 0;           // damping actually added to diag(H) (SparseGPT), for the report
  int64_t damping_retries = 0;  // how many times the damping was raised because a Cholesky factorization failed
};

// One prunable layer of a model, as a selector may check it before the run prunes anything.
struct LayerTarget {
  std::string layer{};  // as LayerStats::layer
  int64_t out_features = 0;
  int64_t in_features = 0;
  SparsityPattern target;
};

class MaskSelector {
 public:
  virtual ~MaskSelector() = default;
  // Called once with every layer the run will prune, before it prunes any: a selector that reads something per
  // layer (a mask file) checks it all here, so that bad data stops the run before anything is written. By
  // default there is nothing to check.
  virtual void check_layers(std::span<const LayerTarget> /*layers*/) const {}
  // weight: [out, in], any floating dtype, any device; the statistics the selector reads (its table entry says
  // which) must be defined and match. `target` is this layer's sparsity or N:M pattern.
  virtual Selection select(const at::Tensor& weight, const LayerStats& stats, const SparsityPattern& target) const = 0;
};

// The input statistics a selector reads. Every pruning run with calibration data accumulates H anyway (the report's
// errors and OPTIMA need it); Wanda's column norms are accumulated only for selectors that read them.
enum class SelectorInputs {
  kNone,     // the weight alone
  kNorms,    // the squared column norms of the input (Wanda's statistic)
  kHessian,  // H = (2/n) sum x x^T
};

struct SelectorInfo {
  std::string_view name;  // as --method spells it
  std::string_view help;  // one line for --help and error messages
  SelectorInputs inputs;
  std::unique_ptr<MaskSelector> (*make)(const SelectorSettings& settings);
  // Usage error for settings the selector cannot run with on `target` (e.g. a SparseGPT block size that splits
  // N:M groups); checked before any model is loaded. May be null.
  void (*check)(const SelectorSettings& settings, const SparsityPattern& target) = nullptr;
  bool reads_masks = false;  // takes each layer's mask from SelectorSettings::masks rather than choosing it

  bool needs_calibration() const { return inputs != SelectorInputs::kNone; }
  bool needs_norms() const { return inputs == SelectorInputs::kNorms; }
  bool needs_hessian() const { return inputs == SelectorInputs::kHessian; }
};

// Every selector, in the order help texts and error messages list them.
std::span<const SelectorInfo> selector_table();
// The entry of `name`; a usage error listing the known names when there is none.
const SelectorInfo& find_selector(std::string_view name);
// "magnitude, wanda, sparsegpt": the names for help texts and messages.
std::string selector_names(std::string_view separator = ", ");

// Usage error for settings no selector accepts (percdamp < 0 or not finite, blocksize < 1), or that `name` cannot
// run with on `target`; an unknown name is a usage error too.
void check_selector_settings(std::string_view name, const SelectorSettings& settings, const SparsityPattern& target);
// The selector `name`, after checking the run-wide settings (not any target's: select() checks its own).
std::unique_ptr<MaskSelector> make_selector(std::string_view name, const SelectorSettings& settings = {});

// SparseGPT's retry policy: after a failed Cholesky factorization the damping is multiplied by 10, at most this
// many times, before the layer is declared numerically hopeless.
inline constexpr int64_t kMaxDampingRetries = 4;

}  // namespace optima
