// `optima convert`: rewrites a checkpoint as safetensors (from pytorch_model.bin, into other shard sizes, or
// another floating-point dtype), with its config and tokenizer files.
#include <spdlog/spdlog.h>

#include "commands.h"
#include "optima/core/byte_size.h"
#include "optima/core/defaults.h"
#include "optima/io/checkpoint.h"
#include "optima/io/checkpoint_writer.h"
#include "optima/io/tensor.h"

namespace optima::cli {

Command add_convert(CLI::App& root) {
  auto* app =
      root.add_subcommand("convert", "Rewrite a checkpoint as (sharded) safetensors, optionally in another dtype");
  struct Options {
    std::string model, out, dtype, max_shard = std::string(kDefaultMaxShardSize);
    bool overwrite = false;
  };
  auto o = std::make_shared<Options>();
  app->add_option("--model", o->model, "Input model directory")->required();
  app->add_option("--out", o->out, "Output model directory")->required();
  app->add_option("--dtype", o->dtype, "Cast floating-point weights: float32, float16, bfloat16 or float64");
  app->add_option("--max-shard-size", o->max_shard, "Largest weight file, e.g. 500MB")->capture_default_str();
  app->add_flag("--overwrite", o->overwrite, "Replace an existing output directory");
  return {app, [o] {
            const Checkpoint checkpoint = Checkpoint::open(o->model);
            RewriteOptions options;
            options.max_shard_bytes = parse_byte_size(o->max_shard);
            if (!o->dtype.empty()) options.dtype = parse_float_dtype(o->dtype);
            options.overwrite = o->overwrite;
            rewrite_checkpoint(checkpoint, o->out, options);
            spdlog::info("wrote {} tensors to {}", checkpoint.tensors().size(), o->out);
            return 0;
          }};
}

}  // namespace optima::cli
