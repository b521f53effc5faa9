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
#include "optima/eval/perplexity.h"
#include "optima/prune/plan.h"

namespace optima {

// The directory name of one setting: "<method>[+optima]-<unstructured|NofM>-<sparsity>[-owl]".
std::string sweep_setting_name(const PrunePlan& plan);

// The settings of a sweep: every combination of the lists (N:M patterns take their own sparsity N/M, so they are
// not repeated per sparsity, nor per allocation other than uniform beside unstructured ones), each a copy of `base`
// with out = base.out / sweep_setting_name(...). Usage errors for empty lists, bad entries, duplicates, and a sparsity
// other than N/M given with N:M patterns alone.
std::vector<PrunePlan> expand_sweep(const PrunePlan& base, const std::vector<std::string>& methods,
                                    const std::vector<std::string>& patterns, const std::vector<double>& sparsities,
                                    const std::vector<Reconstruct>& reconstructs,
                                    const std::vector<SparsityAllocation>& allocations = {
                                        SparsityAllocation::kUniform});

// Runs the settings (all with the same model, calibration and output root `out`) and returns the sweep table, also
// written to out/sweep.json. With an eval dataset, the dense model is evaluated first as the table's baseline; each
// setting's tokenizer, device and dtype are its plan's.
nlohmann::json run_sweep(const std::vector<PrunePlan>& plans, const std::filesystem::path& out, bool overwrite,
                         const EvalRequest& eval, ProgressSink& progress);

// One evaluation as the sweep table records it.
nlohmann::json perplexity_json(const PerplexityResult& result);

}  // namespace optima
