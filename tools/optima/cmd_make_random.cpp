// `optima make-random`: writes a random-initialised model of a real architecture (for tests, demos, benchmarks).
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "optima/core/byte_size.h"
#include "optima/core/defaults.h"
#include "optima/core/error.h"
#include "optima/io/checkpoint_writer.h"
#include "optima/io/json_file.h"
#include "optima/io/tensor.h"
#include "optima/model/arch.h"
#include "optima/model/random_model.h"

namespace optima::cli {

Command add_make_random(CLI::App& root) {
  const std::string model_types = fmt::format("{}", fmt::join(supported_model_types(), ", "));
  auto* app = root.add_subcommand("make-random",
                                  "Write a random model of a real architecture (model_type " + model_types + ")");
  struct Options {
    std::string preset, config, out, dtype = "float32", max_shard = std::string(kDefaultMaxShardSize), tokenizer;
    uint64_t seed = 0;
    bool overwrite = false;
  };
  auto o = std::make_shared<Options>();
  auto* preset = app->add_option("--preset", o->preset, "Built-in configuration: opt-tiny or llama-tiny");
  auto* config_option =
      app->add_option("--config", o->config,
                      "A Hugging Face config.json whose model_type is one of " + model_types + " (e.g. OPT-125M's)");
  preset->excludes(config_option);
  app->add_option("--out", o->out, "Output model directory")->required();
  app->add_option("--seed", o->seed, "Random seed")->capture_default_str();
  app->add_option("--dtype", o->dtype, "float32, float16, bfloat16 or float64")->capture_default_str();
  app->add_option("--max-shard-size", o->max_shard, "Largest weight file, e.g. 500MB")->capture_default_str();
  app->add_option("--tokenizer", o->tokenizer, "Directory whose tokenizer files are copied alongside");
  app->add_flag("--overwrite", o->overwrite, "Replace an existing output directory");
  return {app, [o] {
            if (o->preset.empty() && o->config.empty()) fail_usage("make-random needs --preset or --config");
            const nlohmann::json config =
                o->preset.empty() ? read_json_file(o->config) : random_model_preset(o->preset);
            RandomModelOptions options;
            options.seed = o->seed;
            options.dtype = parse_float_dtype(o->dtype);
            options.max_shard_bytes = parse_byte_size(o->max_shard);
            options.overwrite = o->overwrite;
            options.tokenizer_dir = o->tokenizer;
            write_random_model(config, o->out, options);
            spdlog::info("wrote random {} model to {}", config.value("model_type", "?"), o->out);
            return 0;
          }};
}

}  // namespace optima::cli
