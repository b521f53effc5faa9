// Random-initialised models of a real architecture, written as Hugging Face checkpoints.
//
// There are no real OPT weights offline, so tests, demos and benchmarks build models of the real OPT (or LLaMA)
// layout with random weights: same tensor names, shapes and config keys as the published checkpoints.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "optima/core/defaults.h"

namespace optima {

struct RandomModelOptions {
  uint64_t seed = 0;
  c10::ScalarType dtype = c10::ScalarType::Float;
  uint64_t max_shard_bytes = kDefaultMaxShardBytes;
  double init_std = 0.02;
  bool overwrite = false;
  std::filesystem::path tokenizer_dir;  // tokenizer files to copy alongside, if not empty
};

// Built-in configurations: "opt-tiny", "llama-tiny" (a few MB), usable without any asset.
std::vector<std::string> random_model_presets();
nlohmann::json random_model_preset(std::string_view name);

// Writes config.json and random weights for `config` into `out` (staged, renamed when complete).
void write_random_model(const nlohmann::json& config, const std::filesystem::path& out,
                        const RandomModelOptions& options);

}  // namespace optima
