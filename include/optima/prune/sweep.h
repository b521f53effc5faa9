// Sweeps: many pruning settings (methods, patterns, sparsities, with and without OPTIMA) of one model in one run.
// The calibration text is read and tokenized once and shared by every setting; each setting writes its checkpoint
// to OUT/<name>/ (e.g. OUT/sparsegpt+optima-unstructured-0.6/), optionally followed by a perplexity evaluation, and
// OUT/sweep.json tabulates them all. The whole of OUT is staged and renamed into place at the end.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "optima/core/progress.h"
#include "optima/prune/plan.h"

namespace optima {

// Perplexity evaluation after pruning (optima eval's protocol).
struct EvalRequest {
  std::filesystem::path dataset;  // empty: no evaluation
  int64_t seqlen = 2048;          // capped at the model's positions
  int64_t max_windows = 0;        // 0: all
  int64_t batch_size = 8;
};

// The directory name of one setting: "<method>[+optima]-<unstructured|NofM>-<sparsity>".
std::string sweep_setting_name(const PrunePlan& plan);

// The settings of a sweep: every combination of the lists (N:M patterns take their own sparsity N/M, so they are
// not repeated per sparsity), each a copy of `base` with out = base.out / sweep_setting_name(...). Usage errors for
// empty lists, bad entries, and duplicates.
std::vector<PrunePlan> expand_sweep(const PrunePlan& base, const std::vector<std::string>& methods,
                                    const std::vector<std::string>& patterns, const std::vector<double>& sparsities,
                                    const std::vector<std::string>& reconstructs);

// Runs the settings (all with the same model, calibration and output root `out`) and returns the sweep table, also
// written to out/sweep.json. With an eval request, the dense model is evaluated first as the table's baseline.
nlohmann::json run_sweep(const std::vector<PrunePlan>& plans, const std::filesystem::path& out, bool overwrite,
                         const EvalRequest& eval, ProgressSink& progress);

// Evaluates a model directory under the perplexity protocol; returns {"perplexity", "seqlen", "windows", "seconds"}.
nlohmann::json evaluate_model_dir(const std::filesystem::path& model, const std::filesystem::path& tokenizer,
                                  const std::string& device, const std::string& dtype, const EvalRequest& eval,
                                  ProgressSink& progress);

}  // namespace optima
