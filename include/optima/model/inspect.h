// What `optima inspect` reports about a checkpoint: architecture, parameter count, and every prunable linear
// layer with its current fraction of zeros (to check a pruned model at a glance).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "optima/io/checkpoint.h"
#include "optima/model/arch.h"

namespace optima {

struct LinearSummary {
  std::string name;  // full tensor name without ".weight"
  std::vector<int64_t> shape;
  std::string dtype;
  double zero_fraction = 0;
  std::string input;  // the input site it reads ("attn_in", ...): layers sharing one share a Hessian
};

struct InspectReport {
  std::string dir;
  std::string format;  // "safetensors" | "pytorch_model.bin"
  size_t weight_files = 0;
  ModelShape shape;
  int64_t parameters = 0;
  std::vector<LinearSummary> linears;
};

// Validates the checkpoint against its config, then measures every prunable linear (one tensor in memory at a time).
InspectReport inspect_checkpoint(const Checkpoint& checkpoint);
nlohmann::json to_json(const InspectReport& report);
std::string to_text(const InspectReport& report);

}  // namespace optima
