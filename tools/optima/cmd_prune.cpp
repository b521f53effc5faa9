// `optima prune`: the main job. Settings come from defaults, then a TOML config file (--config, read by main.cpp for
// whichever subcommand runs), then the command line; --dump-config prints the resolved settings as a config file
// and exits without checking that they are complete (a template to edit). Started by torchrun or srun (RANK/WORLD_SIZE
// or SLURM_PROCID/SLURM_NTASKS in the environment), the processes share one pruning run (dist/distributed.h).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>

#include "commands.h"
#include "optima/core/error.h"
#include "optima/dist/distributed.h"
#include "optima/io/output_dir.h"
#include "optima/io/tensor.h"
#include "optima/prune/plan.h"
#include "optima/prune/pruner.h"
#include "optima/prune/sweep.h"
#include "optima/select/selector.h"

namespace optima::cli {
namespace {

// "Mask selector (a list sweeps): magnitude (...), wanda (...), ..." from the selector table.
std::string method_help() {
  std::string text = "Mask selector (a list sweeps):";
  for (const SelectorInfo& info : selector_table())
    text += fmt::format("{} {} ({})", text.back() == ':' ? "" : ",", info.name, info.help);
  return text;
}

// What the command line and settings file give, before the enum settings are parsed.
struct PruneOptions {
  PrunePlan plan;
  std::string model, out, calib, tokenizer, save_hessians, eval;
  // Enum settings as written; parsed once, when the command runs.
  std::string propagation = std::string(to_string(Propagation::kReference));
  std::string calib_rule = std::string(kDefaultCalibRule);
  std::string qp_precision = std::string(to_string(PrunePlan{}.qp_precision));
  std::string qp_solver = std::string(to_string(PrunePlan{}.qp_solver));
  std::string hessian_dtype = std::string(to_string(PrunePlan{}.hessian_dtype));
  std::string masks;
  // Lists (comma-separated or TOML arrays): more than one setting makes a sweep.
  std::vector<std::string> methods = {PrunePlan{}.method}, patterns = {"unstructured"},
                           reconstructs = {std::string(to_string(Reconstruct::kNone))},
                           allocations = {std::string(to_string(SparsityAllocation::kUniform))};
  std::vector<double> sparsities;
  EvalRequest eval_request;
  double dist_timeout = 1800;
  bool dump_config = false;
};

// What to prune and how: the settings a sweep may list.
void add_what_to_prune(CLI::App* app, PruneOptions& o) {
  app->add_flag("--dump-config", o.dump_config, "Print the resolved settings as a config file and exit")
      ->configurable(false);
  app->add_option("--model", o.model, "Model directory (Hugging Face layout)")->required();
  app->add_option("--out", o.out,
                  "Output directory: the pruned checkpoint and prune_report.json, or for a sweep one such directory "
                  "per setting and sweep.json")
      ->required();
  app->add_option("--sparsity", o.sparsities,
                  "Fraction(s) of weights to zero, in (0, 1), e.g. 0.5 or 0.5,0.6,0.7 (default 0.5; N:M implies N/M)")
      ->delimiter(',');
  app->add_option("--pattern", o.patterns, "unstructured, 2:4, 4:8 or N:M (a list sweeps)")
      ->delimiter(',')
      ->capture_default_str();
  app->add_option("--method", o.methods, method_help())->delimiter(',')->capture_default_str();
  app->add_option("--reconstruct", o.reconstructs,
                  "none, or optima: exact per-row reconstruction after selection (none,optima sweeps both)")
      ->delimiter(',')
      ->capture_default_str();
  app->add_option("--masks", o.masks,
                  "--method masks: the file every layer's mask is read from: optima's masks.safetensors "
                  "(--save-masks), or a pruned checkpoint whose zeros are the mask (a .safetensors file, a sharded "
                  "checkpoint's index .json, or a model directory)");
  app->add_option("--sparsity-allocation", o.allocations,
                  "uniform (every layer at the target) or owl (per-block sparsities from the dense model's outlier "
                  "ratios, averaging to the target; unstructured only; a list sweeps)")
      ->delimiter(',')
      ->capture_default_str();
  app->add_option("--owl-lambda", o.plan.owl_lambda,
                  "OWL: the block sparsities spread over 2·lambda (0 <= lambda, sparsity + 2·lambda < 1)")
      ->capture_default_str();
  app->add_option("--owl-threshold", o.plan.owl_threshold,
                  "OWL: M, a weight is an outlier when its Wanda score exceeds M × its block's mean score (> 0)")
      ->capture_default_str();
}

// Perplexity after pruning.
void add_evaluation(CLI::App* app, PruneOptions& o) {
  app->add_option("--eval", o.eval, "After pruning, evaluate perplexity on this text file (optima eval's protocol)");
  app->add_option("--eval-seqlen", o.eval_request.seqlen, "Evaluation window length (capped at the model's positions)")
      ->capture_default_str();
  app->add_option("--eval-max-windows", o.eval_request.max_windows, "Evaluate only the first N windows (0: all)")
      ->capture_default_str();
}

// Calibration data, its sampling, the selectors' settings and how statistics propagate.
void add_calibration(CLI::App* app, PruneOptions& o) {
  PrunePlan& p = o.plan;
  app->add_option("--calib", o.calib, "Calibration data: text (a document per line), .jsonl, or .npy token ids");
  app->add_option("--tokenizer", o.tokenizer, "Tokenizer directory (default: the model directory)");
  app->add_option("--nsamples", p.nsamples, "Calibration windows")->capture_default_str();
  app->add_option("--seqlen", p.seqlen,
                  fmt::format("Tokens per calibration window (0: {}, capped at the model's positions)", kDefaultSeqlen))
      ->capture_default_str();
  app->add_option("--seed", p.seed, "Sampling seed")->capture_default_str();
  app->add_option("--calib-rule", o.calib_rule,
                  "Sampling from text: reference (a random document longer than seqlen, a random window), "
                  "concatenated (documents joined with EOS, windows from the stream), or auto (reference when at "
                  "least nsamples documents are longer than seqlen, else concatenated)")
      ->capture_default_str();
  app->add_option("--percdamp", p.percdamp, "SparseGPT damping, fraction of mean diag(H)")->capture_default_str();
  app->add_option("--blocksize", p.blocksize, "SparseGPT columns per block")->capture_default_str();
  app->add_option("--propagation", o.propagation, "reference or true-sequential")->capture_default_str();
}

// OPTIMA's solver.
void add_reconstruction(CLI::App* app, PruneOptions& o) {
  PrunePlan& p = o.plan;
  app->add_option("--qp-damp", p.qp_damp,
                  "OPTIMA relative damping of H where H is singular (elsewhere the exact solver only damps its "
                  "factorizations and polishes the answer to the undamped optimum)")
      ->capture_default_str();
  app->add_option("--qp-precision", o.qp_precision, "OPTIMA solve precision: fp64 or fp32 (refined)")
      ->capture_default_str();
  app->add_option("--qp-memory", p.qp_memory, "OPTIMA memory budget per chunk of rows")->capture_default_str();
  app->add_option("--qp-solver", o.qp_solver,
                  "OPTIMA solver: auto (per layer, the cheaper by predicted cost), exact (batched Cholesky per row) or "
                  "iterative (conjugate gradients over all rows, for wide layers)")
      ->capture_default_str();
  app->add_option("--qp-tol", p.qp_tol,
                  "relative KKT residual of the undamped problem to reach on every row (iterative solver; exact "
                  "solver's polishing)")
      ->capture_default_str();
  app->add_option("--qp-max-iter", p.qp_max_iter, "iterative: iteration budget per layer")->capture_default_str();
  app->add_option("--hessian-dtype", o.hessian_dtype, "Accumulate H in fp32 (the reference) or fp64")
      ->capture_default_str();
}

// Devices, outputs, many processes and resuming.
void add_execution(CLI::App* app, PruneOptions& o) {
  PrunePlan& p = o.plan;
  app->add_option("--device", p.device, "cpu, cuda or cuda:N")->capture_default_str();
  app->add_option("--dtype", p.dtype,
                  "Forward-pass dtype (default: the checkpoint's; float32 for a half-precision checkpoint on the CPU)");
  app->add_option("--batch-size", p.batch_size,
                  "Calibration windows per forward call (0: as many as 256 MiB holds for one block's forward pass)")
      ->capture_default_str();
  app->add_option("--skip", p.skip, "Regex of linear layer names to leave dense");
  app->add_option("--max-shard-size", p.max_shard_size, "Largest output weight file")->capture_default_str();
  app->add_flag("--save-masks", p.save_masks, "Also write masks.safetensors (bit-packed)");
  app->add_option("--save-hessians", o.save_hessians, "Directory for the per-block Hessians (safetensors)");
  app->add_flag("--overwrite", p.overwrite, "Replace existing output directories");
  app->add_flag("--allow-non-finite", p.allow_non_finite, "Do not stop on NaN/Inf weights or activations");
  app->add_option("--dist-timeout", o.dist_timeout,
                  "Many processes (started by torchrun or srun: RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT or "
                  "SLURM_PROCID/SLURM_NTASKS): seconds to wait for the others at the start and at each exchange. "
                  "Each process takes a share of the calibration windows and of the reconstruction rows; "
                  "rank 0 writes everything (and runs --eval)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_flag("--resume", p.resume,
                "Continue the interrupted run whose state is in OUT.resume (SIGTERM/SIGINT save it and exit 75); "
                "starts afresh when there is none");
  app->add_option("--activation-memory", p.activation_memory,
                  "Memory for the calibration activations between blocks, e.g. 8GiB; past it they are mapped from "
                  "a file in OUT.resume (auto: half the memory available, none: no limit)")
      ->capture_default_str();
}

// The settings every plan of the run shares, with the enum settings parsed (the edge: nowhere else compares their
// names).
PrunePlan base_plan(const PruneOptions& o) {
  PrunePlan base = o.plan;
  base.model = o.model;
  base.out = o.out;
  base.calib = o.calib;
  base.tokenizer = o.tokenizer;
  base.save_hessians = o.save_hessians;
  base.masks = o.masks;
  base.propagation = parse_propagation(o.propagation);
  base.calib_rule = parse_calib_rule(o.calib_rule);
  base.qp_precision = parse_qp_precision(o.qp_precision);
  base.qp_solver = parse_qp_solver(o.qp_solver);
  base.hessian_dtype = parse_stats_dtype(o.hessian_dtype);
  return base;
}

// One plan per setting the lists name (one plan when nothing is listed twice).
std::vector<PrunePlan> plans_of(const PruneOptions& o, const PrunePlan& base) {
  std::vector<Reconstruct> reconstructs;
  for (const std::string& r : o.reconstructs) reconstructs.push_back(parse_reconstruct(r));
  std::vector<SparsityAllocation> allocations;
  for (const std::string& a : o.allocations) allocations.push_back(parse_allocation(a));
  std::vector<double> sparsities = o.sparsities;
  const bool only_n_m =
      std::none_of(o.patterns.begin(), o.patterns.end(), [](const std::string& s) { return s == "unstructured"; });
  if (sparsities.empty() && !only_n_m) sparsities = {kDefaultSparsity};
  return expand_sweep(base, o.methods, o.patterns, sparsities, reconstructs, allocations);
}

// One setting, in this process or in a job of many (torchrun / srun); rank 0 reports and evaluates.
int run_one(const PrunePlan& plan, const PruneOptions& o, const LaunchEnvironment& launch, EvalRequest eval) {
  auto progress = make_console_progress();
  DistributedOptions dist_options;
  dist_options.timeout = std::chrono::milliseconds(static_cast<int64_t>(o.dist_timeout * 1000));
  dist_options.device = parse_device(plan.device);
  const Distributed dist(launch, dist_options);
  // Rank 0 speaks for the job; the others only warn.
  if (!dist.is_root()) {
    progress = make_null_progress();
    if (spdlog::get_level() < spdlog::level::warn) spdlog::set_level(spdlog::level::warn);
  }
  const PruneReport report = prune_model(plan, *progress, nullptr, dist);
  if (!dist.is_root()) return 0;
  std::printf("%s", report.summary().c_str());
  spdlog::info("wrote {} (report: {})", plan.out.string(), (plan.out / "prune_report.json").string());
  if (eval.dataset.empty()) return 0;
  eval.tokenizer = plan.tokenizer;
  eval.device = plan.device;
  eval.dtype = plan.dtype;
  eval.activation_memory = plan.activation_memory;
  const PerplexityResult r = evaluate_model_dir(plan.out, eval, *progress);
  // Beside the report, for `optima check`: the perplexity and what identifies the evaluation.
  nlohmann::json saved = perplexity_json(r);
  saved["dataset"] = eval.dataset.string();
  saved["tokens"] = r.tokens;
  saved["predictions"] = r.predictions;
  write_text_file(plan.out / "eval.json", saved.dump(2) + "\n");
  std::printf("perplexity %.4f  (seqlen %lld, %lld windows, %s)\n", r.perplexity, static_cast<long long>(r.seqlen),
              static_cast<long long>(r.windows), eval.dataset.string().c_str());
  return 0;
}

// Every setting of a sweep, one after the other in this process, with a table at the end.
int run_many(const std::vector<PrunePlan>& plans, const PrunePlan& base, const EvalRequest& eval) {
  if (!base.save_hessians.empty()) fail_usage("--save-hessians takes one setting, not a sweep");
  if (base.resume)
    fail_usage(
        "--resume takes one setting, not a sweep: run a preemptible sweep as an array job, one "
        "resumable setting per task (scripts/slurm/prune-array.sbatch)");
  auto progress = make_console_progress();
  const nlohmann::json table = run_sweep(plans, base.out, base.overwrite, eval, *progress);
  progress->finish();
  std::printf("%-36s %9s %12s %10s %9s\n", "setting", "sparsity", "mean error", "perplexity", "seconds");
  if (table.contains("dense"))
    std::printf("%-36s %9s %12s %10.4f %9s\n", "dense", "0", "0", table["dense"]["perplexity"].get<double>(), "");
  for (const nlohmann::json& row : table["settings"])
    std::printf("%-36s %9.4f %12.5f %10s %9.1f\n", row["name"].get<std::string>().c_str(),
                row["overall_sparsity"].get<double>(), row["mean_layer_error"].get<double>(),
                row.contains("eval") ? fmt::format("{:.4f}", row["eval"]["perplexity"].get<double>()).c_str() : "-",
                row["seconds"].get<double>());
  spdlog::info("wrote {} settings to {} (table: {})", plans.size(), base.out.string(),
               (base.out / "sweep.json").string());
  return 0;
}

int run_prune(const PruneOptions& o, const CLI::App& app) {
  if (o.dump_config) {
    std::printf("%s", app.config_to_str(/*default_also=*/true, /*write_description=*/true).c_str());
    return 0;
  }
  const PrunePlan base = base_plan(o);
  const std::vector<PrunePlan> plans = plans_of(o, base);
  EvalRequest eval = o.eval_request;
  eval.dataset = o.eval;
  const LaunchEnvironment launch = read_launch_environment();
  if (launch.world_size > 1 && plans.size() > 1)
    fail_usage(
        fmt::format("a sweep ({} settings) runs in one process, but the environment ({}) starts {}: "
                    "prune one setting per job, or run the sweep as a job array "
                    "(scripts/slurm/prune-array.sbatch)",
                    plans.size(), launch.source, launch.world_size));
  if (plans.size() > 1) return run_many(plans, base, eval);
  PrunePlan plan = plans.front();
  plan.out = base.out;
  return run_one(plan, o, launch, eval);
}

}  // namespace

Command add_prune(CLI::App& root) {
  auto* app = root.add_subcommand("prune", "Prune a model: select masks, optionally reconstruct, write a checkpoint");
  auto o = std::make_shared<PruneOptions>();
  add_what_to_prune(app, *o);
  add_evaluation(app, *o);
  add_calibration(app, *o);
  add_reconstruction(app, *o);
  add_execution(app, *o);
  return {app, [o, app] { return run_prune(*o, *app); }};
}

}  // namespace optima::cli
