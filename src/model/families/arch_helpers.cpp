// Checked reading of config.json sizes and linear-layer tensor lists (see arch_helpers.h).
#include "arch_helpers.h"

#include <fmt/format.h>

#include "optima/core/error.h"

namespace optima {

std::string where_key(const ModelConfig& config, std::string_view key) {
  return fmt::format("{}: key '{}'", config.path().string(), key);
}

int64_t check_size(const ModelConfig& config, std::string_view key, int64_t value) {
  if (value <= 0) fail_input(where_key(config, key), "must be positive", "> 0", std::to_string(value));
  if (value > kMaxModelSize)
    fail_input(where_key(config, key), "is implausibly large", fmt::format("at most {}", kMaxModelSize),
               std::to_string(value));
  return value;
}

int64_t require_positive(const ModelConfig& config, std::string_view key) {
  return check_size(config, key, config.require<int64_t>(key));
}

int64_t positive_or(const ModelConfig& config, std::string_view key, int64_t fallback) {
  return config.has(key) ? require_positive(config, key) : fallback;
}

void append_linear_tensors(const std::string& prefix, const std::vector<LinearLayer>& layers,
                           std::vector<ExpectedTensor>& out) {
  for (const LinearLayer& l : layers) {
    out.push_back({prefix + l.name + ".weight", {l.out_features, l.in_features}, TensorInit::kNormal});
    if (l.bias) out.push_back({prefix + l.name + ".bias", {l.out_features}, TensorInit::kZeros});
  }
}

std::string llama_layout_block_prefix(int64_t block) {
  return fmt::format("model.layers.{}.", block);
}

std::vector<ExpectedTensor> llama_layout_global_tensors(const ModelShape& shape) {
  std::vector<ExpectedTensor> out;
  out.push_back({"model.embed_tokens.weight", {shape.vocab_size, shape.hidden_size}, TensorInit::kNormal});
  out.push_back({"model.norm.weight", {shape.hidden_size}, TensorInit::kOnes});
  if (!shape.tie_word_embeddings) {
    out.push_back({"lm_head.weight", {shape.vocab_size, shape.hidden_size}, TensorInit::kNormal});
  }
  return out;
}

}  // namespace optima
