// The pruning report as JSON (both directions) and as a table (see report.h).
#include "optima/prune/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace optima {

nlohmann::json LayerReport::to_json() const {
  nlohmann::json j = {{"name", name},
                      {"block", block},
                      {"input", site},
                      {"shape", shape},
                      {"skipped", skipped},
                      {"sparsity", sparsity},
                      {"target_sparsity", target_sparsity},
                      {"pattern_ok", pattern_ok},
                      {"error_selector", error_selector},
                      {"error_final", error_final},
                      {"damping", damping},
                      {"damping_retries", damping_retries},
                      {"seconds_select", seconds_select}};
  if (reconstructed()) {
    j["kkt_residual"] = kkt_residual;
    j["kkt_residual_undamped"] = kkt_residual_undamped;
    j["qp_solver"] = qp_solver;
    j["qp_fp64_predicted"] = qp_fp64_predicted;
    j["qp_condition_estimate"] = qp_condition_estimate;
    if (!qp_input_order.empty()) j["qp_input_order"] = qp_input_order;
    j["qp_predicted_exact_units"] = qp_predicted_exact_units;
    j["qp_predicted_iterative_units"] = qp_predicted_iterative_units;
    j["reconstruct_damping"] = reconstruct_damping;
    j["qp_iterations"] = qp_iterations;
    j["qp_abandoned_iterations"] = qp_abandoned_iterations;
    j["qp_pruned_space_rounds"] = qp_pruned_space_rounds;
    j["qp_fp64_fallback_rows"] = qp_fp64_fallback_rows;
    j["qp_chunks"] = qp_chunks;
    j["qp_converged"] = qp_converged;
    j["seconds_reconstruct"] = seconds_reconstruct;
  }
  return j;
}

LayerReport LayerReport::from_json(const nlohmann::json& j) {
  LayerReport l;
  l.name = j.at("name");
  l.block = j.at("block");
  l.site = j.at("input");
  l.shape = j.at("shape").get<std::vector<int64_t>>();
  l.skipped = j.at("skipped");
  l.sparsity = j.at("sparsity");
  l.target_sparsity = j.value("target_sparsity", 0.0);
  l.pattern_ok = j.at("pattern_ok");
  l.error_selector = j.at("error_selector");
  l.error_final = j.at("error_final");
  l.damping = j.at("damping");
  l.damping_retries = j.at("damping_retries");
  l.seconds_select = j.at("seconds_select");
  if (j.contains("kkt_residual")) {
    l.kkt_residual = j.at("kkt_residual");
    l.kkt_residual_undamped = j.value("kkt_residual_undamped", -1.0);
    l.qp_solver = j.value("qp_solver", std::string());
    l.qp_fp64_predicted = j.value("qp_fp64_predicted", false);
    l.qp_condition_estimate = j.value("qp_condition_estimate", 0.0);
    l.qp_input_order = j.value("qp_input_order", std::string());
    l.qp_predicted_exact_units = j.value("qp_predicted_exact_units", 0.0);
    l.qp_predicted_iterative_units = j.value("qp_predicted_iterative_units", 0.0);
    l.reconstruct_damping = j.at("reconstruct_damping");
    l.qp_iterations = j.at("qp_iterations");
    l.qp_abandoned_iterations = j.value("qp_abandoned_iterations", int64_t{0});
    l.qp_pruned_space_rounds = j.value("qp_pruned_space_rounds", int64_t{0});
    l.qp_fp64_fallback_rows = j.at("qp_fp64_fallback_rows");
    l.qp_chunks = j.at("qp_chunks");
    l.qp_converged = j.at("qp_converged");
    l.seconds_reconstruct = j.at("seconds_reconstruct");
  }
  return l;
}

void PruneReport::total_sparsity() {
  int64_t zeros = 0, total = 0;
  for (const LayerReport& l : layers) {
    const int64_t n = l.shape[0] * l.shape[1];
    total += n;
    zeros += std::llround(l.sparsity * static_cast<double>(n));
  }
  overall_sparsity = total ? static_cast<double>(zeros) / static_cast<double>(total) : 0.0;
}

nlohmann::json PruneReport::to_json() const {
  nlohmann::json layers_json = nlohmann::json::array();
  for (const LayerReport& l : layers) layers_json.push_back(l.to_json());
  return {
      {"settings", settings},
      {"calibration", calibration},
      {"calibration_sampling", calibration_sampling},
      {"fingerprint", fingerprint},
      {"model_type", model_type},
      {"num_layers", num_layers},
      {"overall_sparsity", overall_sparsity},
      {"sparsity_allocation", allocation},
      {"timings",
       {{"total", seconds.total},
        {"calibration", seconds.calibration},
        {"forward", seconds.forward},
        {"select", seconds.select},
        {"reconstruct", seconds.reconstruct},
        {"write", seconds.write},
        {"communicate", seconds.communicate}}},
      {"peak_rss_bytes", peak_rss_bytes},
      {"activations", {{"bytes", activation_bytes}, {"on_disk", activations_on_disk}}},
      {"resumed_from_block", resumed_from_block >= 0 ? nlohmann::json(resumed_from_block) : nlohmann::json(nullptr)},
      {"layers", layers_json}};
}

std::string PruneReport::summary() const {
  size_t width = 5;
  for (const LayerReport& l : layers) width = std::max(width, l.name.size());
  const bool reconstructed = !layers.empty() && layers.front().reconstructed();
  std::string out = fmt::format("{:<{}}  {:>11}  {:>8}  {:>7}  {:>11}", "layer", width, "shape", "sparsity", "pattern",
                                "err(select)");
  if (reconstructed) out += fmt::format("  {:>10}  {:>8}", "err(final)", "kkt");
  out += "\n";
  for (const LayerReport& l : layers) {
    out += fmt::format("{:<{}}  {:>11}  {:>8.4f}  {:>7}  {:>11.5f}", l.name, width,
                       fmt::format("{}x{}", l.shape[0], l.shape[1]), l.sparsity,
                       l.skipped ? "skipped" : (l.pattern_ok ? "ok" : "BROKEN"), l.error_selector);
    if (reconstructed) out += fmt::format("  {:>10.5f}  {:>8.1e}", l.error_final, l.kkt_residual);
    out += "\n";
  }
  out += fmt::format("overall sparsity {:.4f} over {} linear layers; {:.1f} s (forward {:.1f}, select {:.1f}",
                     overall_sparsity, layers.size(), seconds.total, seconds.forward, seconds.select);
  if (reconstructed) out += fmt::format(", reconstruct {:.1f}", seconds.reconstruct);
  out += fmt::format(", write {:.1f}); peak memory {:.0f} MiB\n", seconds.write,
                     static_cast<double>(peak_rss_bytes) / 1048576.0);
  return out;
}

}  // namespace optima
