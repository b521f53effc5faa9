// `optima inspect MODEL_DIR [--json]`: architecture, parameter count and prunable linear layers of a checkpoint.
#include <cstdio>

#include "commands.h"
#include "optima/io/checkpoint.h"
#include "optima/model/inspect.h"

namespace optima::cli {

Command add_inspect(CLI::App& root) {
  auto* app = root.add_subcommand("inspect", "Describe a Hugging Face checkpoint and its prunable linear layers");
  struct Options {
    std::string model;
    bool json = false;
  };
  auto options = std::make_shared<Options>();
  app->add_option("model", options->model, "Model directory (config.json + safetensors or pytorch_model.bin)")
      ->required();
  app->add_flag("--json", options->json, "Print JSON for scripts instead of text");
  return {app, [options] {
            const Checkpoint checkpoint = Checkpoint::open(options->model);
            const InspectReport report = inspect_checkpoint(checkpoint);
            const std::string text = options->json ? to_json(report).dump(2) + "\n" : to_text(report);
            std::fwrite(text.data(), 1, text.size(), stdout);
            return 0;
          }};
}

}  // namespace optima::cli
