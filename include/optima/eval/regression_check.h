// Regression checks of pruning runs against a stored baseline (`optima check`): a run's prune_report.json (with the
// eval.json `prune --eval` writes beside it) or a sweep's sweep.json is reduced to its identity (the settings,
// model and calibration it was made with) and its metrics (perplexity, per-layer errors, achieved sparsity, pattern
// checks, time, memory), and compared with a baseline of the same form, each metric within a relative tolerance.
//
// Verdicts: ok; regressed (a metric moved the wrong way past its tolerance: perplexity, errors, time or memory up;
// achieved sparsity off in either direction, since pruning more or less than the baseline are both other results;
// a pattern check that passed and now fails); incomparable (another model, calibration set, evaluation text or
// setting: the difference is named). The requested sparsity is not part of the identity: a run pruned at a higher
// sparsity than its baseline is a regression of the achieved sparsity (and of its errors and perplexity), which is
// what a CI job wants to hear about.
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "optima/core/enum_names.h"

namespace optima {

// What a metric measures; each kind has its own tolerance and direction.
enum class MetricKind { kPerplexity, kError, kSparsity, kPattern, kTime, kMemory };
inline constexpr EnumName<MetricKind> kMetricKindNames[] = {
    {MetricKind::kPerplexity, "perplexity"}, {MetricKind::kError, "error"}, {MetricKind::kSparsity, "sparsity"},
    {MetricKind::kPattern, "pattern"},       {MetricKind::kTime, "time"},   {MetricKind::kMemory, "memory"}};
inline std::string_view to_string(MetricKind v) {
  return enum_name<MetricKind>(kMetricKindNames, v);
}
inline MetricKind parse_metric_kind(std::string_view text) {
  return parse_enum<MetricKind>(kMetricKindNames, text, "metric kind");
}

struct Metric {
  std::string name;  // e.g. "perplexity", "layer model.decoder.layers.0.fc1 error_final"
  MetricKind kind = MetricKind::kError;
  double value = 0;
};

// A run or a sweep reduced to what a check compares.
struct RunSummary {
  std::string kind;         // "run" or "sweep"
  std::string source;       // the file it was read from
  nlohmann::json identity;  // what must be equal for metrics to be comparable
  std::vector<Metric> metrics;
  std::map<std::string, double> tolerances;  // a baseline's own tolerances (kind name -> relative), may be empty
};

// Reads a run directory (prune_report.json, and eval.json when present), a sweep directory (sweep.json, and each
// setting's prune_report.json when present), or one of those files itself. Input errors name the file.
RunSummary summarize_run(const std::filesystem::path& path);

// A baseline file: the summary, format-tagged (see baseline_json). Input errors name the file and the key.
RunSummary read_baseline(const std::filesystem::path& path);
nlohmann::json baseline_json(const RunSummary& summary);

// Relative tolerances per metric kind, and whether time and memory are compared at all.
struct Tolerances {
  std::map<MetricKind, double> relative;
  bool check_time = false;
  bool check_memory = false;
};
// The defaults of include/optima/core/defaults.h (README, "CI regression runs", says how they were measured).
Tolerances default_tolerances();
// Applies "kind=value" (e.g. "perplexity=0.01"); naming time or memory turns their check on. Usage errors name
// `where` (the command line, or the baseline file).
void apply_tolerance(Tolerances& tolerances, std::string_view text, std::string_view where = "--tolerance");
// The tolerances of a check: the defaults, then the baseline's own, then the command line's `overrides`.
Tolerances resolve_tolerances(const RunSummary& baseline, const std::vector<std::string>& overrides, bool check_time,
                              bool check_memory);

enum class CheckVerdict { kOk, kRegressed, kIncomparable };

struct MetricCheck {
  std::string name;
  MetricKind kind = MetricKind::kError;
  double baseline = 0;
  double current = 0;
  double relative_change = 0;  // (current - baseline) / |baseline|; 0 when both are 0
  double tolerance = 0;
  std::string status;  // "ok", "moved" (within tolerance), "improved", "regressed"
};

struct CheckResult {
  CheckVerdict verdict = CheckVerdict::kOk;
  std::vector<std::string> differences;  // incomparable: what differs, one line each
  std::vector<MetricCheck> checks;
  int64_t skipped = 0;  // metrics not compared (time and memory unless asked for)
};

// Compares `current` with `baseline` metric by metric (metrics of the baseline missing from the run make it
// incomparable; metrics only the run has are not compared).
CheckResult compare_runs(const RunSummary& baseline, const RunSummary& current, const Tolerances& tolerances);

// A table of the metrics that moved (all regressed ones first), and a summary line.
std::string check_table(const CheckResult& result);
// JUnit XML: one test case per compared metric (failures for regressions), or one failed case naming the
// differences when the runs are incomparable.
std::string check_junit(const CheckResult& result, const std::string& suite);

}  // namespace optima
