// What every family file needs for its architecture: reading config.json keys as all families do (sizes checked to
// be positive and plausible, every error naming the file and the key) and listing a block's linear-layer tensors.
// Internal to src/model.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "optima/io/model_config.h"
#include "optima/model/arch.h"

namespace optima {

// Sizes above this are rejected: no model comes near, and it keeps the product of any two sizes (a weight's element
// count, heads x head_dim) within int64, which the tensor layouts and every user of a shape rely on.
inline constexpr int64_t kMaxModelSize = std::numeric_limits<int32_t>::max();

// "<file>: key '<key>'", the <where> of an error about one key.
std::string where_key(const ModelConfig& config, std::string_view key);
// `value` if it is a size in [1, kMaxModelSize], else an input error naming `key`.
int64_t check_size(const ModelConfig& config, std::string_view key, int64_t value);
// A size that must be present.
int64_t require_positive(const ModelConfig& config, std::string_view key);
// A size that may be absent (then `fallback`), but is checked like a required one when present.
int64_t positive_or(const ModelConfig& config, std::string_view key, int64_t fallback);

// Appends the weight (and bias, when the layer has one) of each layer, named under `prefix`, in the layers' order.
void append_linear_tensors(const std::string& prefix, const std::vector<LinearLayer>& layers,
                           std::vector<ExpectedTensor>& out);

// The LLaMA checkpoint layout, which LLaMA, Mistral, Qwen2/3 and Phi-3 share: a block's tensors sit under
// "model.layers.<block>."; the global ones are the token embedding, the final norm and, unless the embeddings are
// tied, lm_head.
std::string llama_layout_block_prefix(int64_t block);
std::vector<ExpectedTensor> llama_layout_global_tensors(const ModelShape& shape);

}  // namespace optima
