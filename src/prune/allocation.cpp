// OWL's per-block sparsities (see allocation.h).
#include "optima/prune/allocation.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>

#include "optima/core/error.h"

namespace optima {

double outlier_ratio(const std::vector<std::pair<at::Tensor, at::Tensor>>& weights_and_stats, double threshold) {
  std::vector<at::Tensor> scores;
  scores.reserve(weights_and_stats.size());
  for (const auto& entry : weights_and_stats) {
    // The reference: |W| (model dtype, widened) times sqrt of the fp32 statistic, flattened and pooled on the CPU.
    const at::Tensor w = entry.first.to(at::kCPU, at::kFloat);
    const at::Tensor root = at::sqrt(entry.second.to(at::kCPU, at::kFloat)).unsqueeze(0);
    scores.push_back((w.abs() * root).reshape({-1}));
  }
  OPTIMA_ASSERT(!scores.empty());
  const at::Tensor pool = at::cat(scores);
  // torch.mean(pool) * M, the product in fp32 as the reference's tensor arithmetic does it.
  const at::Tensor limit = at::mean(pool) * threshold;
  const auto count = (pool > limit).sum().item<int64_t>();
  return static_cast<double>(count) / static_cast<double>(pool.numel()) * 100.0;
}

std::vector<double> owl_sparsities(const std::vector<double>& ratios, double target, double lambda) {
  OPTIMA_ASSERT(!ratios.empty());
  const auto [lo, hi] = std::minmax_element(ratios.begin(), ratios.end());
  const double min_d = *lo, max_d = *hi;
  std::vector<double> s(ratios.size(), target);
  if (max_d == min_d) return s;
  std::vector<double> spread(ratios.size());
  for (size_t i = 0; i < ratios.size(); ++i) spread[i] = (ratios[i] - min_d) * ((1.0 / (max_d - min_d)) * lambda * 2);
  const double mean = std::accumulate(spread.begin(), spread.end(), 0.0) / static_cast<double>(spread.size());
  for (size_t i = 0; i < ratios.size(); ++i) {
    s[i] = 1.0 - ((spread[i] - mean) + (1.0 - target));
    if (s[i] <= 0) s[i] = kOwlSparsityFloor;
  }
  return s;
}

nlohmann::json BlockAllocation::to_json(const PrunePlan& plan) const {
  nlohmann::json j = {{"method", std::string(to_string(plan.allocation))},
                      {"target", plan.pattern.sparsity()},
                      {"block_sparsity", sparsity}};
  if (plan.allocation == SparsityAllocation::kOwl) {
    j["owl_lambda"] = plan.owl_lambda;
    j["owl_threshold"] = plan.owl_threshold;
    j["outlier_ratio"] = outlier_ratio;
    j["seconds_dense_pass"] = seconds;
  }
  return j;
}

BlockAllocation BlockAllocation::from_json(const nlohmann::json& j) {
  BlockAllocation a;
  a.sparsity = j.at("block_sparsity").get<std::vector<double>>();
  if (j.contains("outlier_ratio")) a.outlier_ratio = j.at("outlier_ratio").get<std::vector<double>>();
  a.seconds = j.value("seconds_dense_pass", 0.0);
  return a;
}

}  // namespace optima
