// `optima prune`: the main job. Settings come from defaults, then a TOML config file (--config, read by main.cpp for
// whichever subcommand runs), then the command line; --dump-config prints the resolved settings as a config file
// and exits without checking that they are complete (a template to edit).
#include <spdlog/spdlog.h>

#include <cstdio>

#include "commands.h"
#include "optima/core/error.h"
#include "optima/prune/plan.h"
#include "optima/prune/pruner.h"

namespace optima::cli {

Command add_prune(CLI::App& root) {
  auto* app = root.add_subcommand("prune", "Prune a model: select masks, optionally reconstruct, write a checkpoint");
  struct Options {
    PrunePlan plan;
    std::string model, out, calib, tokenizer, save_hessians, pattern = "unstructured", propagation = "reference";
    std::optional<double> sparsity;
    bool dump_config = false;
  };
  auto o = std::make_shared<Options>();
  PrunePlan& p = o->plan;
  app->add_flag("--dump-config", o->dump_config, "Print the resolved settings as a config file and exit")
      ->configurable(false);
  app->add_option("--model", o->model, "Model directory (Hugging Face layout)")->required();
  app->add_option("--out", o->out, "Output directory for the pruned checkpoint and prune_report.json")->required();
  app->add_option("--sparsity", o->sparsity, "Fraction of weights to zero, in (0, 1) (N:M implies N/M)");
  app->add_option("--pattern", o->pattern, "unstructured, 2:4, 4:8 or N:M")->capture_default_str();
  app->add_option("--method", p.method, "magnitude, wanda or sparsegpt")->capture_default_str();
  app->add_option("--reconstruct", p.reconstruct, "none, or optima: exact per-row reconstruction after selection")
      ->capture_default_str();
  app->add_option("--calib", o->calib, "Calibration data: text (a document per line), .jsonl, or .npy token ids");
  app->add_option("--tokenizer", o->tokenizer, "Tokenizer directory (default: the model directory)");
  app->add_option("--nsamples", p.nsamples, "Calibration windows")->capture_default_str();
  app->add_option("--seqlen", p.seqlen,
                  fmt::format("Tokens per calibration window (0: {}, capped at the model's positions)", kDefaultSeqlen))
      ->capture_default_str();
  app->add_option("--seed", p.seed, "Sampling seed")->capture_default_str();
  app->add_option("--percdamp", p.percdamp, "SparseGPT damping, fraction of mean diag(H)")->capture_default_str();
  app->add_option("--blocksize", p.blocksize, "SparseGPT columns per block")->capture_default_str();
  app->add_option("--propagation", o->propagation, "reference or true-sequential")->capture_default_str();
  app->add_option("--qp-damp", p.qp_damp, "OPTIMA relative damping of H")->capture_default_str();
  app->add_option("--qp-precision", p.qp_precision, "OPTIMA solve precision: fp64 or fp32 (refined)")
      ->capture_default_str();
  app->add_option("--qp-memory", p.qp_memory, "OPTIMA memory budget per chunk of rows")->capture_default_str();
  app->add_option("--qp-solver", p.qp_solver, "OPTIMA solver: exact (batched Cholesky) or cg (for layers too large)")
      ->capture_default_str();
  app->add_option("--qp-tol", p.qp_tol, "cg: relative KKT residual to reach on every row")->capture_default_str();
  app->add_option("--qp-max-iter", p.qp_max_iter, "cg: iteration budget per layer")->capture_default_str();
  app->add_option("--hessian-dtype", p.hessian_dtype, "Accumulate H in fp32 (the reference) or fp64")
      ->capture_default_str();
  app->add_option("--device", p.device, "cpu, cuda or cuda:N")->capture_default_str();
  app->add_option("--dtype", p.dtype, "Forward-pass dtype (default: the checkpoint's)");
  app->add_option("--batch-size", p.batch_size, "Calibration windows per forward call")->capture_default_str();
  app->add_option("--skip", p.skip, "Regex of linear layer names to leave dense");
  app->add_option("--max-shard-size", p.max_shard_size, "Largest output weight file")->capture_default_str();
  app->add_flag("--save-masks", p.save_masks, "Also write masks.safetensors (bit-packed)");
  app->add_option("--save-hessians", o->save_hessians, "Directory for the per-block Hessians (safetensors)");
  app->add_flag("--overwrite", p.overwrite, "Replace existing output directories");
  app->add_flag("--allow-non-finite", p.allow_non_finite, "Do not stop on NaN/Inf weights or activations");
  return {app, [o, app] {
            PrunePlan plan = o->plan;
            plan.model = o->model;
            plan.out = o->out;
            plan.calib = o->calib;
            plan.tokenizer = o->tokenizer;
            plan.save_hessians = o->save_hessians;
            plan.propagation = parse_propagation(o->propagation);
            plan.pattern = SparsityPattern::parse(
                o->pattern, o->pattern == "unstructured" && !o->sparsity ? std::optional<double>(0.5) : o->sparsity);
            if (o->dump_config) {
              std::printf("%s", app->config_to_str(/*default_also=*/true, /*write_description=*/true).c_str());
              return 0;
            }
            plan.validate();
            auto progress = make_console_progress();
            const PruneReport report = prune_model(plan, *progress);
            std::printf("%s", report.summary().c_str());
            spdlog::info("wrote {} (report: {})", plan.out.string(), (plan.out / "prune_report.json").string());
            return 0;
          }};
}

}  // namespace optima::cli
