// Sweeps over pruning settings with one shared calibration set (see sweep.h).
#include "optima/prune/sweep.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "optima/core/error.h"
#include "optima/core/resources.h"
#include "optima/io/checkpoint.h"
#include "optima/io/output_dir.h"
#include "optima/model/arch.h"
#include "optima/prune/calibration_input.h"
#include "optima/prune/pruner.h"
#include "optima/select/selector.h"

namespace optima {
namespace fs = std::filesystem;

namespace {

using Clock = SteadyClock;

}  // namespace

std::string sweep_setting_name(const PrunePlan& plan) {
  const std::string pattern =
      plan.pattern.is_unstructured() ? "unstructured" : fmt::format("{}of{}", plan.pattern.n(), plan.pattern.m());
  return fmt::format(
      "{}{}-{}-{:g}{}", plan.method, plan.reconstruct == Reconstruct::kOptima ? "+optima" : "", pattern,
      plan.pattern.sparsity(),
      plan.allocation == SparsityAllocation::kUniform ? std::string() : fmt::format("-{}", to_string(plan.allocation)));
}

std::vector<PrunePlan> expand_sweep(const PrunePlan& base, const std::vector<std::string>& methods,
                                    const std::vector<std::string>& patterns, const std::vector<double>& sparsities,
                                    const std::vector<Reconstruct>& reconstructs,
                                    const std::vector<SparsityAllocation>& allocations) {
  if (methods.empty() || patterns.empty() || reconstructs.empty() || allocations.empty())
    fail_usage("a sweep needs at least one method, pattern, reconstruction and sparsity allocation");
  // N:M patterns fix their own sparsity. Where the patterns are all N:M, a sparsity that is given anyway must
  // equal N/M (SparsityPattern::parse refuses another); beside an unstructured pattern, it is that pattern's.
  const bool any_unstructured =
      std::any_of(patterns.begin(), patterns.end(), [](const std::string& p) { return p == "unstructured"; });
  if (!any_unstructured)
    for (const std::string& pattern : patterns)
      for (double s : sparsities) (void)SparsityPattern::parse(pattern, s);
  std::vector<PrunePlan> plans;
  std::set<std::string> names;
  for (const std::string& method : methods)
    for (const Reconstruct reconstruct : reconstructs)
      for (const SparsityAllocation allocation : allocations)
        for (const std::string& pattern : patterns) {
          const bool unstructured = pattern == "unstructured";
          // An allocation other than uniform shares an unstructured sparsity: beside unstructured settings, N:M ones
          // are listed once, uniform (alone, plan.validate says why it is refused).
          if (allocation != SparsityAllocation::kUniform && !unstructured && any_unstructured) continue;
          if (unstructured && sparsities.empty()) fail_usage("an unstructured pattern needs --sparsity");
          const std::vector<std::optional<double>> levels =
              unstructured ? std::vector<std::optional<double>>(sparsities.begin(), sparsities.end())
                           : std::vector<std::optional<double>>{std::nullopt};
          for (const std::optional<double>& level : levels) {
            PrunePlan plan = base;
            plan.method = method;
            plan.reconstruct = reconstruct;
            plan.pattern = SparsityPattern::parse(pattern, level);
            plan.allocation = allocation;
            // --masks belongs to the methods that read it; a sweep may list others beside them (alone, another
            // method given --masks is refused by plan.validate).
            if (methods.size() > 1 && !find_selector(method).reads_masks) plan.masks.clear();
            const std::string name = sweep_setting_name(plan);
            if (!names.insert(name).second) fail_usage(fmt::format("the sweep lists setting {} twice", name));
            plan.out = base.out / name;
            plan.validate();
            plans.push_back(std::move(plan));
          }
        }
  return plans;
}

nlohmann::json perplexity_json(const PerplexityResult& r) {
  return {{"perplexity", r.perplexity}, {"seqlen", r.seqlen}, {"windows", r.windows}, {"seconds", r.seconds}};
}

namespace {

// The evaluation request of a plan's model: the sweep's dataset and windows, the plan's tokenizer and device.
EvalRequest request_for(const PrunePlan& plan, const EvalRequest& eval) {
  EvalRequest request = eval;
  request.tokenizer = plan.tokenizer;
  request.device = plan.device;
  request.dtype = plan.dtype;
  request.activation_memory = plan.activation_memory;
  return request;
}

}  // namespace

nlohmann::json run_sweep(const std::vector<PrunePlan>& plans, const fs::path& out, bool overwrite,
                         const EvalRequest& eval, ProgressSink& progress) {
  if (plans.empty()) fail_usage("a sweep needs at least one setting");
  const PrunePlan& first = plans.front();
  for (const PrunePlan& p : plans) p.validate();
  StagedDirectory staged(out, overwrite, first.model);

  // One calibration set for every setting: same model, file, tokenizer and sampling.
  const auto start = Clock::now();
  CalibrationSet calibration;
  const bool calibrated = !first.calib.empty();
  if (calibrated) {
    const Checkpoint checkpoint = Checkpoint::open(first.model);
    const ModelShape shape = read_model_shape(checkpoint.config());
    const int64_t seqlen = calibration_seqlen(first, shape.max_positions, checkpoint.config().path().string());
    calibration = load_plan_calibration(first, checkpoint, shape, seqlen);
    spdlog::info("sweep: {} settings share the calibration set: {}", plans.size(), calibration.description);
    if (!calibration.rule_reason.empty())
      spdlog::info("calibration rule {}: {}", calibration.rule, calibration.rule_reason);
  }

  nlohmann::json table = {{"model", first.model.string()},
                          {"calibration", calibrated ? calibration.description : "none"},
                          {"calibration_sampling", calibrated ? calibration.sampling_json() : nlohmann::json(nullptr)},
                          {"eval", eval.dataset.empty() ? nlohmann::json(nullptr)
                                                        : nlohmann::json{{"dataset", eval.dataset.string()},
                                                                         {"seqlen", eval.seqlen},
                                                                         {"max_windows", eval.max_windows}}},
                          {"settings", nlohmann::json::array()}};
  if (!eval.dataset.empty()) {
    spdlog::info("sweep: evaluating the dense model");
    table["dense"] = perplexity_json(evaluate_model_dir(first.model, request_for(first, eval), progress));
  }
  for (size_t i = 0; i < plans.size(); ++i) {
    PrunePlan plan = plans[i];
    const std::string name = plan.out.filename().string();
    plan.out = staged.staging() / name;
    plan.overwrite = false;
    spdlog::info("sweep: setting {}/{}: {}", i + 1, plans.size(), name);
    const auto t0 = Clock::now();
    const PruneReport report = prune_model(plan, progress, calibrated ? &calibration : nullptr);
    // The settings share the model and the calibration tokens: the first one's hashes identify the sweep's.
    if (i == 0)
      table["fingerprint"] = {{"model", report.fingerprint.value("model", "")},
                              {"calibration", report.fingerprint.value("calibration", "")}};
    double error_sum = 0;
    for (const LayerReport& l : report.layers) error_sum += l.error_final;
    nlohmann::json row = {{"name", name},
                          {"method", plan.method},
                          {"pattern", plan.pattern.name()},
                          {"sparsity", plan.pattern.sparsity()},
                          {"reconstruct", std::string(to_string(plan.reconstruct))},
                          {"sparsity_allocation", std::string(to_string(plan.allocation))},
                          {"overall_sparsity", report.overall_sparsity},
                          {"mean_layer_error", report.layers.empty() ? 0.0 : error_sum / report.layers.size()},
                          {"seconds", seconds_since(t0)},
                          {"peak_rss_bytes_so_far", peak_rss_bytes()}};
    if (!eval.dataset.empty())
      row["eval"] = perplexity_json(evaluate_model_dir(plan.out, request_for(plan, eval), progress));
    table["settings"].push_back(row);
  }
  table["seconds_total"] = seconds_since(start);
  table["peak_rss_bytes"] = peak_rss_bytes();
  write_text_file(staged.staging() / "sweep.json", table.dump(2) + "\n");
  staged.commit();
  return table;
}

}  // namespace optima
