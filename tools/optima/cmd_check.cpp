// `optima check`: compares a pruning run (or a sweep) with a stored baseline, for CI regression jobs; or records
// one (--write-baseline). Exit codes: 0 ok, 1 regressed, 2 incomparable (another model, calibration or setting) or a
// usage error, 3 a missing or malformed file. The comparison itself is eval/regression_check.h.
#include <cstdio>

#include "commands.h"
#include "optima/core/error.h"
#include "optima/eval/regression_check.h"
#include "optima/io/output_dir.h"

namespace optima::cli {
namespace {

struct CheckOptions {
  std::string baseline, run, junit;
  std::vector<std::string> tolerances;
  bool write_baseline = false;
  bool check_time = false;
  bool check_memory = false;
};

constexpr int kExitRegressed = 1;

int run_check(const CheckOptions& o) {
  const RunSummary current = summarize_run(o.run);
  if (o.write_baseline) {
    RunSummary baseline = current;
    for (const std::string& t : o.tolerances) {  // recorded as the baseline's own tolerances
      Tolerances parsed = default_tolerances();
      apply_tolerance(parsed, t);
      const std::string kind = t.substr(0, t.find('='));
      baseline.tolerances[kind] = parsed.relative.at(parse_metric_kind(kind));
    }
    write_text_file(o.baseline, baseline_json(baseline).dump(2) + "\n");
    std::printf("wrote baseline %s (%zu metrics of %s)\n", o.baseline.c_str(), baseline.metrics.size(),
                current.source.c_str());
    return kExitOk;
  }
  const RunSummary baseline = read_baseline(o.baseline);
  const Tolerances tolerances = resolve_tolerances(baseline, o.tolerances, o.check_time, o.check_memory);
  const CheckResult result = compare_runs(baseline, current, tolerances);
  std::printf("%s", check_table(result).c_str());
  if (!o.junit.empty()) write_text_file(o.junit, check_junit(result, "optima check"));
  switch (result.verdict) {
    case CheckVerdict::kOk: return kExitOk;
    case CheckVerdict::kRegressed: return kExitRegressed;
    case CheckVerdict::kIncomparable: return kExitUsage;
  }
  return kExitInternal;
}

}  // namespace

Command add_check(CLI::App& root) {
  auto* app = root.add_subcommand(
      "check", "Compare a run's report (or a sweep's) with a baseline: exit 0 ok, 1 regressed, 2 incomparable");
  auto o = std::make_shared<CheckOptions>();
  app->add_option("run", o->run, "Run directory (prune_report.json, eval.json), sweep directory, or the file itself")
      ->required();
  app->add_option("--baseline", o->baseline, "Baseline file (JSON) to compare with, or to write")->required();
  app->add_flag("--write-baseline", o->write_baseline,
                "Record the run as the baseline (with any --tolerance as the baseline's own) instead of comparing");
  app->add_option("--tolerance", o->tolerances,
                  "KIND=RELATIVE, repeatable; KIND: perplexity, error, sparsity, time, memory (naming time or memory "
                  "turns its check on)");
  app->add_flag("--check-time", o->check_time, "Also compare wall times (off by default: machine-dependent)");
  app->add_flag("--check-memory", o->check_memory, "Also compare peak memory (off by default)");
  app->add_option("--junit", o->junit, "Also write the result as JUnit XML to this file");
  return {app, [o] { return run_check(*o); }};
}

}  // namespace optima::cli
