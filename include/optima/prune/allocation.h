// How a run's target sparsity is shared among the decoder blocks. Uniform: every layer at the target. OWL (Yin et
// al., "Outlier Weighed Layerwise Sparsity", ICML 2024; algorithms.md §11): blocks with more outlier weights
// (Wanda scores above M times their block's mean, measured on the dense model) are pruned less, the sparsities
// spread over 2·lambda and averaging to the target. The arithmetic follows the reference code (luuyin/OWL,
// prune_wanda_outlier), quirks included; the pass over the dense model that feeds it lives in the pruner.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "optima/prune/plan.h"

namespace optima {

// Block ℓ's outlier ratio D_ℓ in percent: every entry |W_ij|·sqrt(stat_j) of the block's linears (weight [out, in],
// stat [in], Wanda's statistic of its input) pooled into one vector, its mean μ in fp32, and the share of entries
// strictly above threshold·μ, times 100.
double outlier_ratio(const std::vector<std::pair<at::Tensor, at::Tensor>>& weights_and_stats, double threshold);

// The block sparsities from the outlier ratios (steps 2-4 of §11, in double, in the reference's order):
// D' = (D − min D)·((1/(max D − min D))·lambda·2), s_ℓ = 1 − ((D'_ℓ − mean D') + (1 − target)), and s_ℓ <= 0 becomes
// kOwlSparsityFloor. Equal ratios give every block the target (the reference divides by zero there).
std::vector<double> owl_sparsities(const std::vector<double>& ratios, double target, double lambda);

// The allocation of one run: per block, the outlier ratio (OWL) and the sparsity its unstructured layers get.
struct BlockAllocation {
  std::vector<double> outlier_ratio;  // empty for uniform
  std::vector<double> sparsity;
  double seconds = 0;  // the dense pass

  bool empty() const { return sparsity.empty(); }
  // The report's and state.json's form (with the settings that produced it), and back; doubles round-trip exactly.
  nlohmann::json to_json(const PrunePlan& plan) const;
  static BlockAllocation from_json(const nlohmann::json& j);
};

}  // namespace optima
