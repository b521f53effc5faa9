// Regression checks of pruning runs against a baseline (see regression_check.h).
#include "optima/eval/regression_check.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

#include "optima/core/defaults.h"
#include "optima/core/error.h"
#include "optima/io/json_file.h"

namespace optima {
namespace fs = std::filesystem;

namespace {

constexpr std::string_view kBaselineFormat = "optima-check-baseline";
constexpr int kBaselineVersion = 1;

// Settings that say where files are or how the run was executed, not what was computed: paths (the model and the
// calibration are identified by content), the device and batching, the number of processes, the activation budget.
// The requested sparsity is compared as a metric (the achieved sparsity), not as identity.
constexpr const char* kSettingsNotCompared[] = {
    "model", "out", "calib", "tokenizer", "device", "batch_size", "world_size", "activation_memory", "sparsity"};

// The value at `key` of `object` read from `file`, of the expected JSON type; input errors name both.
const nlohmann::json& field(const nlohmann::json& object, const std::string& key, const fs::path& file,
                            nlohmann::json::value_t type) {
  if (!object.is_object() || !object.contains(key))
    fail_input(file.string(), fmt::format("no \"{}\"", key), fmt::format("a key \"{}\"", key), "none");
  const nlohmann::json& value = object.at(key);
  const bool ok = value.type() == type || (type == nlohmann::json::value_t::number_float && value.is_number()) ||
                  (type == nlohmann::json::value_t::number_integer && value.is_number_integer());
  if (!ok)
    fail_input(file.string(), fmt::format("\"{}\" has the wrong type", key), json_type_name(nlohmann::json(type)),
               json_type_name(value));
  return value;
}

double number(const nlohmann::json& object, const std::string& key, const fs::path& file) {
  return field(object, key, file, nlohmann::json::value_t::number_float).get<double>();
}

void add(RunSummary& summary, std::string name, MetricKind kind, double value) {
  summary.metrics.push_back({std::move(name), kind, value});
}

// Without OPTIMA the solver's settings (qp_*) change nothing, so a new default for them leaves a run comparable.
nlohmann::json compared_settings(const nlohmann::json& settings) {
  nlohmann::json s = settings;
  for (const char* key : kSettingsNotCompared) s.erase(key);
  if (s.value("reconstruct", std::string()) == "none")
    for (auto it = s.begin(); it != s.end();) it = it.key().rfind("qp_", 0) == 0 ? s.erase(it) : std::next(it);
  return s;
}

// The metrics of one prune_report.json, names prefixed by `prefix` (a sweep's setting name).
void add_report_metrics(RunSummary& summary, const nlohmann::json& report, const fs::path& file,
                        const std::string& prefix) {
  add(summary, prefix + "overall_sparsity", MetricKind::kSparsity, number(report, "overall_sparsity", file));
  for (const nlohmann::json& layer : field(report, "layers", file, nlohmann::json::value_t::array)) {
    const std::string name = prefix + field(layer, "name", file, nlohmann::json::value_t::string).get<std::string>();
    add(summary, name + " sparsity", MetricKind::kSparsity, number(layer, "sparsity", file));
    add(summary, name + " pattern_ok", MetricKind::kPattern,
        field(layer, "pattern_ok", file, nlohmann::json::value_t::boolean).get<bool>() ? 1.0 : 0.0);
    add(summary, name + " error_selector", MetricKind::kError, number(layer, "error_selector", file));
    add(summary, name + " error_final", MetricKind::kError, number(layer, "error_final", file));
  }
  if (report.contains("timings"))
    add(summary, prefix + "seconds", MetricKind::kTime, number(report["timings"], "total", file));
  if (report.contains("peak_rss_bytes"))
    add(summary, prefix + "peak_rss_bytes", MetricKind::kMemory, number(report, "peak_rss_bytes", file));
}

nlohmann::json layer_names(const nlohmann::json& report, const fs::path& file) {
  nlohmann::json names = nlohmann::json::array();
  for (const nlohmann::json& layer : field(report, "layers", file, nlohmann::json::value_t::array))
    names.push_back(field(layer, "name", file, nlohmann::json::value_t::string));
  return names;
}

// eval.json of `prune --eval` (or `optima eval --json` saved there): the perplexity, and what identifies the
// evaluation (window length, windows, tokens: the text by content, not by path).
void add_eval(RunSummary& summary, const fs::path& file) {
  const nlohmann::json eval = read_json_file(file);
  add(summary, "perplexity", MetricKind::kPerplexity, number(eval, "perplexity", file));
  if (eval.contains("seconds")) add(summary, "eval seconds", MetricKind::kTime, number(eval, "seconds", file));
  nlohmann::json id = {{"seqlen", number(eval, "seqlen", file)}, {"windows", number(eval, "windows", file)}};
  if (eval.contains("tokens")) id["tokens"] = number(eval, "tokens", file);
  summary.identity["eval"] = id;
}

RunSummary summarize_report(const fs::path& file) {
  const nlohmann::json report = read_json_file(file);
  RunSummary summary;
  summary.kind = "run";
  summary.source = file.string();
  summary.identity = {{"model_type", field(report, "model_type", file, nlohmann::json::value_t::string)},
                      {"num_layers", field(report, "num_layers", file, nlohmann::json::value_t::number_integer)},
                      {"settings", compared_settings(field(report, "settings", file, nlohmann::json::value_t::object))},
                      {"layers", layer_names(report, file)},
                      {"eval", nullptr}};
  if (report.contains("fingerprint") && report["fingerprint"].is_object()) {
    summary.identity["model"] = report["fingerprint"].value("model", "");
    summary.identity["calibration"] = report["fingerprint"].value("calibration", "");
  }
  add_report_metrics(summary, report, file, "");
  const fs::path eval = file.parent_path() / "eval.json";
  std::error_code ec;
  if (fs::exists(eval, ec)) add_eval(summary, eval);
  return summary;
}

RunSummary summarize_sweep(const fs::path& file) {
  const nlohmann::json sweep = read_json_file(file);
  RunSummary summary;
  summary.kind = "sweep";
  summary.source = file.string();
  nlohmann::json names = nlohmann::json::array();
  const nlohmann::json& rows = field(sweep, "settings", file, nlohmann::json::value_t::array);
  for (const nlohmann::json& row : rows) names.push_back(field(row, "name", file, nlohmann::json::value_t::string));
  summary.identity = {{"settings", names},
                      {"calibration_sampling", sweep.value("calibration_sampling", nlohmann::json(nullptr))},
                      {"fingerprint", sweep.value("fingerprint", nlohmann::json(nullptr))},
                      {"eval", nullptr}};
  if (sweep.contains("eval") && sweep["eval"].is_object())
    summary.identity["eval"] = {{"seqlen", sweep["eval"].value("seqlen", 0)},
                                {"max_windows", sweep["eval"].value("max_windows", 0)}};
  if (sweep.contains("dense"))
    add(summary, "dense perplexity", MetricKind::kPerplexity, number(sweep["dense"], "perplexity", file));
  for (const nlohmann::json& row : rows) {
    const std::string name = row.at("name").get<std::string>();
    const fs::path report = file.parent_path() / name / "prune_report.json";
    std::error_code ec;
    if (fs::exists(report, ec)) {  // the setting's own report: per-layer figures
      add_report_metrics(summary, read_json_file(report), report, name + ": ");
    } else {
      add(summary, name + ": overall_sparsity", MetricKind::kSparsity, number(row, "overall_sparsity", file));
      add(summary, name + ": seconds", MetricKind::kTime, number(row, "seconds", file));
    }
    add(summary, name + ": mean_layer_error", MetricKind::kError, number(row, "mean_layer_error", file));
    if (row.contains("eval"))
      add(summary, name + ": perplexity", MetricKind::kPerplexity, number(row["eval"], "perplexity", file));
  }
  if (sweep.contains("seconds_total"))
    add(summary, "seconds_total", MetricKind::kTime, number(sweep, "seconds_total", file));
  if (sweep.contains("peak_rss_bytes"))
    add(summary, "peak_rss_bytes", MetricKind::kMemory, number(sweep, "peak_rss_bytes", file));
  return summary;
}

double parse_fraction(std::string_view text, std::string_view where, std::string_view what) {
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(value) || value < 0)
    fail_usage(fmt::format("{}: tolerance of {} must be a number >= 0 (a relative change, e.g. 0.01), not '{}'", where,
                           what, text));
  return value;
}

// Is a change from b to c within `tolerance` (relative to |b|, with a floor for values near zero)?
bool within(double b, double c, double tolerance) {
  constexpr double kFloor = 1e-12;
  return std::fabs(c - b) <= tolerance * std::fabs(b) + kFloor;
}

std::string status_of(MetricKind kind, double b, double c, double tolerance) {
  if (b == c) return "ok";
  if (kind == MetricKind::kPattern) return c < b ? "regressed" : "improved";
  if (within(b, c, tolerance)) return "moved";
  if (kind == MetricKind::kSparsity) return "regressed";  // pruning more or less than the baseline: both differ
  return c > b ? "regressed" : "improved";
}

std::string describe(const nlohmann::json& value) {
  if (value.is_null()) return "none";
  const std::string text = value.is_string() ? value.get<std::string>() : value.dump();
  return text.size() > 60 ? text.substr(0, 57) + "..." : text;
}

// What differs between two identities, one line per difference (settings key by key).
std::vector<std::string> identity_differences(const RunSummary& baseline, const RunSummary& current) {
  std::vector<std::string> out;
  if (baseline.kind != current.kind) {
    out.push_back(fmt::format("kind: the baseline is a {}, the run a {}", baseline.kind, current.kind));
    return out;
  }
  const nlohmann::json& a = baseline.identity;
  const nlohmann::json& b = current.identity;
  for (const auto& [key, value] : a.items()) {
    const nlohmann::json other = b.value(key, nlohmann::json(nullptr));
    if (value == other || value.is_null()) continue;  // what the baseline does not record is not compared
    if (key == "settings" && value.is_object() && other.is_object()) {
      for (const auto& [setting, v] : value.items())
        if (other.value(setting, nlohmann::json(nullptr)) != v)
          out.push_back(fmt::format("setting {}: baseline {}, run {}", setting, describe(v),
                                    describe(other.value(setting, nlohmann::json(nullptr)))));
      for (const auto& [setting, v] : other.items())
        if (!value.contains(setting))
          out.push_back(fmt::format("setting {}: baseline none, run {}", setting, describe(v)));
    } else if (key == "model") {
      out.push_back("model: the weights or config.json differ (content hash " + describe(value) + " vs " +
                    describe(other) + ")");
    } else if (key == "calibration") {
      out.emplace_back(
          "calibration: other calibration tokens (file, tokenizer, sampling rule, windows or seed differ)");
    } else {
      out.push_back(fmt::format("{}: baseline {}, run {}", key, describe(value), describe(other)));
    }
  }
  return out;
}

std::string xml_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string verdict_name(CheckVerdict v) {
  switch (v) {
    case CheckVerdict::kOk: return "ok";
    case CheckVerdict::kRegressed: return "regressed";
    case CheckVerdict::kIncomparable: return "incomparable";
  }
  return {};
}

}  // namespace

RunSummary summarize_run(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail_input(path.string(), "run directory or report does not exist");
  if (fs::is_directory(path, ec)) {
    if (fs::exists(path / "prune_report.json", ec)) return summarize_report(path / "prune_report.json");
    if (fs::exists(path / "sweep.json", ec)) return summarize_sweep(path / "sweep.json");
    fail_input(path.string(), "not a run or sweep directory", "prune_report.json or sweep.json in it", "neither");
  }
  if (path.filename() == "sweep.json") return summarize_sweep(path);
  const nlohmann::json probe = read_json_file(path);
  if (probe.is_object() && probe.contains("layers")) return summarize_report(path);
  if (probe.is_object() && probe.contains("settings") && probe["settings"].is_array()) return summarize_sweep(path);
  fail_input(path.string(), "not a pruning report or sweep table", "prune_report.json or sweep.json",
             "JSON with neither \"layers\" nor a \"settings\" list");
}

nlohmann::json baseline_json(const RunSummary& summary) {
  nlohmann::json metrics = nlohmann::json::array();
  for (const Metric& m : summary.metrics)
    metrics.push_back({{"name", m.name}, {"kind", std::string(to_string(m.kind))}, {"value", m.value}});
  nlohmann::json tolerances = nlohmann::json::object();
  for (const auto& [kind, value] : summary.tolerances) tolerances[kind] = value;
  return {{"format", kBaselineFormat}, {"version", kBaselineVersion},  {"kind", summary.kind},
          {"source", summary.source},  {"identity", summary.identity}, {"tolerances", tolerances},
          {"metrics", metrics}};
}

RunSummary read_baseline(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail_input(path.string(), "baseline does not exist (write one with --write-baseline)");
  const nlohmann::json j = read_json_file(path);
  if (!j.is_object() || j.value("format", "") != kBaselineFormat)
    fail_input(path.string(), "not a baseline of optima check", fmt::format("\"format\": \"{}\"", kBaselineFormat),
               j.is_object() ? describe(j.value("format", nlohmann::json(nullptr))) : json_type_name(j));
  const int version = field(j, "version", path, nlohmann::json::value_t::number_integer).get<int>();
  if (version != kBaselineVersion)
    fail_input(path.string(), "unsupported baseline version", std::to_string(kBaselineVersion),
               std::to_string(version));
  RunSummary summary;
  summary.kind = field(j, "kind", path, nlohmann::json::value_t::string).get<std::string>();
  summary.source = j.value("source", path.string());
  summary.identity = field(j, "identity", path, nlohmann::json::value_t::object);
  if (summary.identity.contains("settings") && summary.identity["settings"].is_object())
    summary.identity["settings"] = compared_settings(summary.identity["settings"]);
  if (j.contains("tolerances")) {
    for (const auto& [kind, value] : field(j, "tolerances", path, nlohmann::json::value_t::object).items()) {
      if (!value.is_number()) fail_input(path.string(), fmt::format("tolerance \"{}\" is not a number", kind));
      summary.tolerances[kind] = value.get<double>();
    }
  }
  for (const nlohmann::json& m : field(j, "metrics", path, nlohmann::json::value_t::array)) {
    const std::string kind = field(m, "kind", path, nlohmann::json::value_t::string).get<std::string>();
    try {
      summary.metrics.push_back({field(m, "name", path, nlohmann::json::value_t::string).get<std::string>(),
                                 parse_metric_kind(kind), number(m, "value", path)});
    } catch (const Error&) {
      fail_input(path.string(), fmt::format("unknown metric kind '{}'", kind),
                 enum_choices<MetricKind>(kMetricKindNames), kind);
    }
  }
  return summary;
}

Tolerances default_tolerances() {
  Tolerances t;
  t.relative = {{MetricKind::kPerplexity, kDefaultCheckPerplexityTolerance},
                {MetricKind::kError, kDefaultCheckErrorTolerance},
                {MetricKind::kSparsity, kDefaultCheckSparsityTolerance},
                {MetricKind::kPattern, 0.0},
                {MetricKind::kTime, kDefaultCheckTimeTolerance},
                {MetricKind::kMemory, kDefaultCheckMemoryTolerance}};
  return t;
}

void apply_tolerance(Tolerances& tolerances, std::string_view text, std::string_view where) {
  const size_t eq = text.find('=');
  if (eq == std::string_view::npos)
    fail_usage(
        fmt::format("{}: '{}' is not KIND=VALUE (KIND: {})", where, text, enum_choices<MetricKind>(kMetricKindNames)));
  const std::string_view name = text.substr(0, eq);
  MetricKind kind = MetricKind::kError;
  try {
    kind = parse_metric_kind(name);
  } catch (const Error&) {
    fail_usage(fmt::format("{}: unknown metric kind '{}' (expected {})", where, name,
                           enum_choices<MetricKind>(kMetricKindNames)));
  }
  if (kind == MetricKind::kPattern) fail_usage(fmt::format("{}: pattern checks are pass/fail, no tolerance", where));
  tolerances.relative[kind] = parse_fraction(text.substr(eq + 1), where, name);
  if (kind == MetricKind::kTime) tolerances.check_time = true;
  if (kind == MetricKind::kMemory) tolerances.check_memory = true;
}

Tolerances resolve_tolerances(const RunSummary& baseline, const std::vector<std::string>& overrides, bool check_time,
                              bool check_memory) {
  Tolerances t = default_tolerances();
  for (const auto& [kind, value] : baseline.tolerances)
    apply_tolerance(t, fmt::format("{}={}", kind, value), "the baseline's tolerances");
  t.check_time = t.check_memory = false;  // a baseline's own time tolerance does not turn the time check on
  for (const std::string& o : overrides) apply_tolerance(t, o);
  t.check_time = t.check_time || check_time;
  t.check_memory = t.check_memory || check_memory;
  return t;
}

CheckResult compare_runs(const RunSummary& baseline, const RunSummary& current, const Tolerances& tolerances) {
  CheckResult result;
  result.differences = identity_differences(baseline, current);
  std::map<std::string, const Metric*> found;
  for (const Metric& m : current.metrics) found[m.name] = &m;
  for (const Metric& m : baseline.metrics) {
    if ((m.kind == MetricKind::kTime && !tolerances.check_time) ||
        (m.kind == MetricKind::kMemory && !tolerances.check_memory)) {
      ++result.skipped;
      continue;
    }
    const auto it = found.find(m.name);
    if (it == found.end()) {
      result.differences.push_back(fmt::format("metric '{}' is in the baseline but not in the run", m.name));
      continue;
    }
    MetricCheck c;
    c.name = m.name;
    c.kind = m.kind;
    c.baseline = m.value;
    c.current = it->second->value;
    c.tolerance = tolerances.relative.at(m.kind);
    c.relative_change = c.baseline == c.current ? 0.0
                        : c.baseline == 0       ? std::copysign(std::numeric_limits<double>::infinity(), c.current)
                                                : (c.current - c.baseline) / std::fabs(c.baseline);
    c.status = status_of(m.kind, c.baseline, c.current, c.tolerance);
    result.checks.push_back(std::move(c));
  }
  if (!result.differences.empty()) {
    result.verdict = CheckVerdict::kIncomparable;
  } else if (std::any_of(result.checks.begin(), result.checks.end(),
                         [](const MetricCheck& c) { return c.status == "regressed"; })) {
    result.verdict = CheckVerdict::kRegressed;
  }
  return result;
}

std::string check_table(const CheckResult& result) {
  std::string out;
  if (result.verdict == CheckVerdict::kIncomparable) {
    out += "incomparable: the run was not made like the baseline:\n";
    for (const std::string& d : result.differences) out += "  " + d + "\n";
    return out;
  }
  std::vector<const MetricCheck*> moved;
  for (const MetricCheck& c : result.checks)
    if (c.status != "ok") moved.push_back(&c);
  std::stable_sort(moved.begin(), moved.end(), [](const MetricCheck* a, const MetricCheck* b) {
    return (a->status == "regressed") > (b->status == "regressed");
  });
  size_t width = 6;
  for (const MetricCheck* c : moved) width = std::max(width, c->name.size());
  if (!moved.empty()) {
    out += fmt::format("{:<{}}  {:>10}  {:>14}  {:>14}  {:>10}  {:>9}  {}\n", "metric", width, "kind", "baseline",
                       "run", "change", "tolerance", "status");
    for (const MetricCheck* c : moved)
      out += fmt::format("{:<{}}  {:>10}  {:>14.7g}  {:>14.7g}  {:>9.3g}%  {:>8.3g}%  {}\n", c->name, width,
                         to_string(c->kind), c->baseline, c->current, 100 * c->relative_change, 100 * c->tolerance,
                         c->status);
  }
  int64_t regressed = 0, improved = 0, within = 0;
  for (const MetricCheck& c : result.checks) {
    regressed += c.status == "regressed";
    improved += c.status == "improved";
    within += c.status == "moved";
  }
  out += fmt::format(
      "{} metrics compared ({} not: time and memory are compared with --check-time, --check-memory); {} moved within "
      "tolerance, {} improved, {} regressed: {}\n",
      result.checks.size(), result.skipped, within, improved, regressed, verdict_name(result.verdict));
  return out;
}

std::string check_junit(const CheckResult& result, const std::string& suite) {
  std::string cases;
  int64_t failures = 0, tests = 0;
  if (result.verdict == CheckVerdict::kIncomparable) {
    std::string text;
    for (const std::string& d : result.differences) text += d + "\n";
    cases += fmt::format(
        "    <testcase classname=\"{0}\" name=\"comparable\">\n      <failure message=\"incomparable: {1} "
        "difference(s)\" type=\"incomparable\">{2}</failure>\n    </testcase>\n",
        xml_escape(suite), result.differences.size(), xml_escape(text));
    ++failures;
    ++tests;
  } else {
    for (const MetricCheck& c : result.checks) {
      ++tests;
      cases += fmt::format("    <testcase classname=\"{}.{}\" name=\"{}\">", xml_escape(suite), to_string(c.kind),
                           xml_escape(c.name));
      if (c.status == "regressed") {
        ++failures;
        cases += fmt::format(
            "\n      <failure message=\"{} regressed: baseline {:.9g}, run {:.9g} ({:+.3g}%, tolerance {:.3g}%)\" "
            "type=\"regressed\"/>\n    ",
            xml_escape(c.name), c.baseline, c.current, 100 * c.relative_change, 100 * c.tolerance);
      }
      cases += "</testcase>\n";
    }
  }
  return fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"{}\" tests=\"{}\" "
      "failures=\"{}\" errors=\"0\" skipped=\"0\">\n{}  </testsuite>\n</testsuites>\n",
      xml_escape(suite), tests, failures, cases);
}

}  // namespace optima
