// optima check's comparison: reports reduced to identity and metrics, verdicts at the tolerance's edge, the
// baseline file's round trip, tolerance parsing and the JUnit form.
#include <fstream>
#include <random>

#include "optima/eval/regression_check.h"
#include "optima/io/output_dir.h"
#include "test_util.h"

namespace optima::test {
namespace {

// A prune_report.json of two layers, as the pruner writes it (the fields optima check reads).
nlohmann::json make_report(double sparsity, double error, bool pattern_ok = true) {
  nlohmann::json layers = nlohmann::json::array();
  for (const char* name : {"model.decoder.layers.0.fc1", "model.decoder.layers.0.fc2"})
    layers.push_back({{"name", name},
                      {"sparsity", sparsity},
                      {"pattern_ok", pattern_ok},
                      {"error_selector", 2 * error},
                      {"error_final", error}});
  return {{"settings",
           {{"model", "/somewhere/opt-small"},
            {"method", "sparsegpt"},
            {"sparsity", sparsity},
            {"seed", 0},
            {"device", "cpu"},
            {"calib_rule", "auto"}}},
          {"fingerprint", {{"model", "aa"}, {"calibration", "bb"}, {"settings", "cc"}}},
          {"model_type", "opt"},
          {"num_layers", 1},
          {"overall_sparsity", sparsity},
          {"timings", {{"total", 10.0}}},
          {"peak_rss_bytes", 1000},
          {"layers", layers}};
}

fs::path write_run(const TempDir& dir, const std::string& name, const nlohmann::json& report, double perplexity) {
  fs::create_directories(dir / name);
  write_text_file(dir / name / "prune_report.json", report.dump());
  if (perplexity > 0)
    write_text_file(
        dir / name / "eval.json",
        nlohmann::json{{"perplexity", perplexity}, {"seqlen", 128}, {"windows", 4}, {"tokens", 600}}.dump());
  return dir / name;
}

const MetricCheck* find(const CheckResult& r, const std::string& name) {
  for (const MetricCheck& c : r.checks)
    if (c.name == name) return &c;
  return nullptr;
}

TEST(RegressionCheck, IdenticalRunsAreOkAndTheBaselineRoundTrips) {
  TempDir dir;
  const fs::path run = write_run(dir, "run", make_report(0.5, 0.01), 40.0);
  const RunSummary summary = summarize_run(run);
  EXPECT_EQ(summary.kind, "run");
  // 1 overall sparsity + 2 layers x 4 + time + memory + perplexity + eval time (none here).
  EXPECT_EQ(summary.metrics.size(), 12u);
  write_text_file(dir / "base.json", baseline_json(summary).dump());
  const RunSummary baseline = read_baseline(dir / "base.json");
  const CheckResult r = compare_runs(baseline, summary, default_tolerances());
  EXPECT_EQ(r.verdict, CheckVerdict::kOk);
  EXPECT_EQ(r.skipped, 2);  // time and memory
  EXPECT_EQ(r.checks.size(), 10u);
  EXPECT_NE(check_table(r).find(": ok"), std::string::npos) << check_table(r);
}

// A fresh relative change on either side of each kind's tolerance: the verdict flips exactly there.
TEST(RegressionCheck, VerdictsAtTheToleranceEdge) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const double ppl = std::uniform_real_distribution<double>(5, 5000)(rng);
  const double err = std::uniform_real_distribution<double>(1e-4, 0.5)(rng);
  TempDir dir;
  const RunSummary base = summarize_run(write_run(dir, "base", make_report(0.5, err), ppl));
  const Tolerances t = default_tolerances();
  const double tp = t.relative.at(MetricKind::kPerplexity), te = t.relative.at(MetricKind::kError);
  const auto verdict = [&](double sparsity, double error, double perplexity, bool pattern_ok = true) {
    static int n = 0;
    const std::string name = "run" + std::to_string(n++);
    return compare_runs(base, summarize_run(write_run(dir, name, make_report(sparsity, error, pattern_ok), perplexity)),
                        t);
  };
  EXPECT_EQ(verdict(0.5, err * (1 + 0.5 * te), ppl * (1 + 0.5 * tp)).verdict, CheckVerdict::kOk);
  const CheckResult worse_ppl = verdict(0.5, err, ppl * (1 + 2 * tp));
  EXPECT_EQ(worse_ppl.verdict, CheckVerdict::kRegressed);
  ASSERT_NE(find(worse_ppl, "perplexity"), nullptr);
  EXPECT_NEAR(find(worse_ppl, "perplexity")->relative_change, 2 * tp, 1e-9);
  EXPECT_EQ(find(worse_ppl, "perplexity")->status, "regressed");
  EXPECT_EQ(verdict(0.5, err * (1 + 2 * te), ppl).verdict, CheckVerdict::kRegressed);
  // Lower perplexity and errors are improvements, not failures.
  const CheckResult better = verdict(0.5, err * (1 - 2 * te), ppl * (1 - 2 * tp));
  EXPECT_EQ(better.verdict, CheckVerdict::kOk);
  EXPECT_EQ(find(better, "perplexity")->status, "improved");
  // Sparsity off in either direction is a regression: higher sparsity is what the CI test's broken run does.
  EXPECT_EQ(verdict(0.6, err, ppl).verdict, CheckVerdict::kRegressed);
  EXPECT_EQ(verdict(0.4, err, ppl).verdict, CheckVerdict::kRegressed);
  // A pattern check that fails now.
  EXPECT_EQ(verdict(0.5, err, ppl, false).verdict, CheckVerdict::kRegressed);
}

TEST(RegressionCheck, IncomparableRunsNameWhatDiffers) {
  TempDir dir;
  const RunSummary base = summarize_run(write_run(dir, "base", make_report(0.5, 0.01), 40.0));
  nlohmann::json other = make_report(0.5, 0.01);
  other["settings"]["method"] = "wanda";
  other["settings"]["model"] = "/elsewhere/opt-small";  // paths are not compared
  other["settings"]["device"] = "cuda";                 // nor is the device
  other["fingerprint"]["calibration"] = "zz";
  const CheckResult r = compare_runs(base, summarize_run(write_run(dir, "other", other, 40.0)), default_tolerances());
  EXPECT_EQ(r.verdict, CheckVerdict::kIncomparable);
  ASSERT_EQ(r.differences.size(), 2u) << check_table(r);
  const std::string table = check_table(r);
  EXPECT_NE(table.find("setting method: baseline sparsegpt, run wanda"), std::string::npos) << table;
  EXPECT_NE(table.find("calibration: other calibration tokens"), std::string::npos) << table;
  // A baseline with a perplexity against a run without eval.json.
  const CheckResult no_eval =
      compare_runs(base, summarize_run(write_run(dir, "noeval", make_report(0.5, 0.01), 0)), default_tolerances());
  EXPECT_EQ(no_eval.verdict, CheckVerdict::kIncomparable);
  EXPECT_NE(check_table(no_eval).find("'perplexity' is in the baseline but not in the run"), std::string::npos);
}

// The OPTIMA solver's settings matter only to runs that reconstruct: a new --qp-solver default leaves a run without
// OPTIMA comparable (also against a baseline file written before they were filtered), one with OPTIMA not.
TEST(RegressionCheck, SolverSettingsCountOnlyWithOptima) {
  TempDir dir;
  for (const char* reconstruct : {"none", "optima"}) {
    nlohmann::json before = make_report(0.5, 0.01), after = make_report(0.5, 0.01);
    before["settings"]["reconstruct"] = after["settings"]["reconstruct"] = reconstruct;
    before["settings"]["qp_solver"] = "exact";
    before["settings"]["qp_tol"] = 1e-6;
    after["settings"]["qp_solver"] = "auto";
    after["settings"]["qp_tol"] = 1e-9;
    const RunSummary base = summarize_run(write_run(dir, std::string("base-") + reconstruct, before, 40.0));
    nlohmann::json old_file = baseline_json(base);
    old_file["identity"]["settings"] = before["settings"];  // as an older optima wrote it: unfiltered
    write_text_file(dir / "old.json", old_file.dump());
    const RunSummary run = summarize_run(write_run(dir, std::string("run-") + reconstruct, after, 40.0));
    for (const RunSummary& baseline : {base, read_baseline(dir / "old.json")}) {
      const CheckResult r = compare_runs(baseline, run, default_tolerances());
      if (std::string(reconstruct) == "none") {
        EXPECT_EQ(r.verdict, CheckVerdict::kOk) << check_table(r);
      } else {
        EXPECT_EQ(r.verdict, CheckVerdict::kIncomparable);
        EXPECT_NE(check_table(r).find("setting qp_solver: baseline exact, run auto"), std::string::npos)
            << check_table(r);
      }
    }
  }
}

TEST(RegressionCheck, TolerancesAndTimeChecks) {
  TempDir dir;
  RunSummary base = summarize_run(write_run(dir, "base", make_report(0.5, 0.01), 40.0));
  nlohmann::json slow = make_report(0.5, 0.01);
  slow["timings"]["total"] = 25.0;  // +150%
  const RunSummary run = summarize_run(write_run(dir, "slow", slow, 40.0));
  EXPECT_EQ(compare_runs(base, run, resolve_tolerances(base, {}, false, false)).verdict, CheckVerdict::kOk);
  EXPECT_EQ(compare_runs(base, run, resolve_tolerances(base, {}, true, false)).verdict, CheckVerdict::kRegressed);
  EXPECT_EQ(compare_runs(base, run, resolve_tolerances(base, {"time=2"}, false, false)).verdict, CheckVerdict::kOk);
  EXPECT_EQ(compare_runs(base, run, resolve_tolerances(base, {"time=1"}, false, false)).verdict,
            CheckVerdict::kRegressed);
  // The baseline's own tolerances apply, the command line's win.
  base.tolerances["perplexity"] = 0.5;
  const RunSummary worse = summarize_run(write_run(dir, "worse", make_report(0.5, 0.01), 50.0));
  EXPECT_EQ(compare_runs(base, worse, resolve_tolerances(base, {}, false, false)).verdict, CheckVerdict::kOk);
  EXPECT_EQ(compare_runs(base, worse, resolve_tolerances(base, {"perplexity=0.1"}, false, false)).verdict,
            CheckVerdict::kRegressed);
  Tolerances t;
  expect_error([&] { apply_tolerance(t, "perplexity"); }, ErrorKind::kUsage, {"KIND=VALUE"});
  expect_error([&] { apply_tolerance(t, "latency=0.1"); }, ErrorKind::kUsage, {"unknown metric kind 'latency'"});
  expect_error([&] { apply_tolerance(t, "error=-1"); }, ErrorKind::kUsage, {"number >= 0", "-1"});
  expect_error([&] { apply_tolerance(t, "error=abc"); }, ErrorKind::kUsage, {"abc"});
  expect_error([&] { apply_tolerance(t, "pattern=0.1"); }, ErrorKind::kUsage, {"pass/fail"});
}

TEST(RegressionCheck, BadFilesAreInputErrors) {
  TempDir dir;
  expect_error([&] { summarize_run(dir / "absent"); }, ErrorKind::kInput, {"absent", "does not exist"});
  expect_error([&] { summarize_run(dir.path()); }, ErrorKind::kInput, {"prune_report.json or sweep.json"});
  std::ofstream(dir / "prune_report.json") << "{\"layers\": [";
  expect_error([&] { summarize_run(dir.path()); }, ErrorKind::kInput, {"prune_report.json"});
  write_text_file(dir / "prune_report.json", "{\"layers\": [], \"settings\": {}, \"model_type\": \"opt\"}");
  expect_error([&] { summarize_run(dir.path()); }, ErrorKind::kInput, {"prune_report.json", "num_layers"});
  write_text_file(dir / "base.json", "{\"format\": \"something\"}");
  expect_error([&] { read_baseline(dir / "base.json"); }, ErrorKind::kInput, {"base.json", "not a baseline"});
  expect_error([&] { read_baseline(dir / "none.json"); }, ErrorKind::kInput, {"none.json", "--write-baseline"});
}

TEST(RegressionCheck, JunitMarksRegressionsAsFailures) {
  TempDir dir;
  const RunSummary base = summarize_run(write_run(dir, "base", make_report(0.5, 0.01), 40.0));
  const CheckResult r =
      compare_runs(base, summarize_run(write_run(dir, "worse", make_report(0.6, 0.02), 45.0)), default_tolerances());
  const std::string xml = check_junit(r, "suite <&>");
  EXPECT_NE(xml.find("tests=\"10\" failures=\"8\""), std::string::npos) << xml;
  EXPECT_NE(xml.find("suite &lt;&amp;&gt;"), std::string::npos);
  EXPECT_NE(xml.find("<failure message=\"perplexity regressed"), std::string::npos) << xml;
}

}  // namespace
}  // namespace optima::test
