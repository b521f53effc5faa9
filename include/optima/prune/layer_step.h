// One linear layer's step of a pruning run: select a mask for the target, reconstruct the kept weights when asked,
// and measure the result (sparsity, pattern, errors against the layer's Hessian). Works on tensors alone, so it is
// tested without files or models.
#pragma once

#include <ATen/core/Tensor.h>

#include <set>
#include <string>

#include "optima/dist/distributed.h"
#include "optima/prune/plan.h"
#include "optima/prune/report.h"
#include "optima/select/selector.h"
#include "optima/solve/row_solver.h"

namespace optima {

// The reconstruction settings of a run, resolved from its plan.
struct ReconstructSettings {
  Reconstruct method = Reconstruct::kNone;
  QpSolver solver = QpSolver::kAuto;
  double tolerance = kDefaultQpTolerance;            // iterative solver only
  int64_t max_iterations = kDefaultQpMaxIterations;  // iterative solver only
  RowSolveOptions options;

  static ReconstructSettings from_plan(const PrunePlan& plan);
};

struct LayerResult {
  at::Tensor weight;  // to write: the dense weight's dtype and device, pruned entries exactly 0
  at::Tensor pruned;  // bool [out, in], the selector's mask
};

class LayerPruner {
 public:
  LayerPruner(const PrunePlan& plan, const Distributed& dist);

  const SelectorInfo& selector_info() const { return info_; }
  // The selector's check of every layer the run will prune (MaskSelector::check_layers).
  void check_layers(std::span<const LayerTarget> layers) const { selector_->check_layers(layers); }
  // Prunes `dense` ([out, in]) to `target`. `stats` holds what the selector reads (and H for the errors and the
  // reconstruction; without H, the errors stay 0). Fills the measured fields of `report` (name, block, site and
  // shape are the caller's). Errors of the selector and the solver name report.name.
  LayerResult prune(const at::Tensor& dense, const LayerStats& stats, const SparsityPattern& target,
                    LayerReport& report) const;

 private:
  RowSolveResult reconstruct(const at::Tensor& dense, const at::Tensor& pruned, const at::Tensor& start,
                             const at::Tensor& hessian, LayerReport& report) const;

  const SelectorInfo& info_;
  std::unique_ptr<MaskSelector> selector_;
  ReconstructSettings reconstruct_;
  const Distributed& dist_;
  // --qp-solver auto: the input sites (report.site) whose CG was given up for the exact solver; their later layers,
  // which read Hessians of the same kind in the next blocks, go to the exact solver directly (the run prunes one
  // layer at a time).
  mutable std::set<std::string> cg_given_up_sites_;
};

// ||(W - V) X||² / ||W X||² from H ∝ XᵀX: tr(D H Dᵀ) / tr(W H Wᵀ), in fp64 (0 when W X = 0).
double relative_error(const at::Tensor& dense, const at::Tensor& updated, const at::Tensor& hessian);
// Whether every group of an N:M target has at least N zeros (always true for unstructured targets, whose achieved
// fraction is reported instead: the reference's tie rules allow a few more zeros).
bool pattern_holds(const at::Tensor& zeros, const SparsityPattern& target);

}  // namespace optima
