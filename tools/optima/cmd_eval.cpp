// `optima eval`: perplexity of a model on a text file under the WikiText-2 protocol.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "optima/eval/perplexity.h"

namespace optima::cli {

Command add_eval(CLI::App& root) {
  auto* app = root.add_subcommand("eval", "Perplexity on a text file (rows joined by blank lines, windows of seqlen)");
  struct Options {
    std::string model, dataset, tokenizer, device = "cpu", dtype, activation_memory = EvalRequest{}.activation_memory;
    std::string text_format = std::string(kDefaultEvalTextFormat);
    int64_t seqlen = kDefaultEvalSeqlen, batch_size = EvalRequest{}.batch_size, max_windows = 0;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  app->add_option("--model", o->model, "Model directory")->required();
  app->add_option("--dataset", o->dataset,
                  "Rows to join with blank lines: a text file, one row per line (e.g. WikiText-2 wiki.test.raw), or "
                  "JSON Lines with a \"text\" field per row")
      ->required();
  app->add_option("--text-format", o->text_format,
                  "lines (one row per line, empty lines dropped), jsonl (a \"text\" per row, every row kept as given, "
                  "empty ones included: the dataset's \"\\n\\n\".join(rows)), or auto (jsonl for .jsonl files)")
      ->capture_default_str();
  app->add_option("--seqlen", o->seqlen, "Window length in tokens (capped by the model's positions)")
      ->capture_default_str();
  app->add_option("--tokenizer", o->tokenizer, "Tokenizer directory (default: the model directory)");
  app->add_option("--device", o->device, "cpu, cuda or cuda:N")->capture_default_str();
  app->add_option("--dtype", o->dtype,
                  "Compute dtype (default: the checkpoint's; float32 for a half-precision checkpoint on the CPU)");
  app->add_option("--batch-size", o->batch_size, "Windows per forward call (0: as many as 256 MiB holds)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--max-windows", o->max_windows, "Evaluate only the first N windows (0: all)")->capture_default_str();
  app->add_option("--activation-memory", o->activation_memory,
                  "Memory for the windows' hidden states between blocks, e.g. 8GiB; past it they are mapped from a "
                  "temporary file (auto: half the memory available, none: no limit)")
      ->capture_default_str();
  app->add_flag("--json", o->json, "Print the result as JSON");
  return {app, [o] {
            EvalRequest request;
            request.dataset = o->dataset;
            request.text_format = parse_eval_text_format(o->text_format);
            request.tokenizer = o->tokenizer;
            request.device = o->device;
            request.dtype = o->dtype;
            request.seqlen = o->seqlen;
            request.batch_size = o->batch_size;
            request.max_windows = o->max_windows;
            request.activation_memory = o->activation_memory;
            auto progress = make_console_progress();
            const PerplexityResult r = evaluate_model_dir(o->model, request, *progress);
            if (o->json) {
              const nlohmann::json j = {
                  {"model", o->model},      {"dataset", o->dataset},        {"perplexity", r.perplexity},
                  {"mean_nll", r.mean_nll}, {"seqlen", r.seqlen},           {"windows", r.windows},
                  {"tokens", r.tokens},     {"predictions", r.predictions}, {"seconds", r.seconds},
                  {"device", o->device},    {"text_format", o->text_format}};
              std::printf("%s\n", j.dump(2).c_str());
            } else {
              std::printf("perplexity %.4f  (seqlen %lld, %lld windows, %lld predicted tokens of %lld, %.1f s)\n",
                          r.perplexity, static_cast<long long>(r.seqlen), static_cast<long long>(r.windows),
                          static_cast<long long>(r.predictions), static_cast<long long>(r.tokens), r.seconds);
            }
            return 0;
          }};
}

}  // namespace optima::cli
