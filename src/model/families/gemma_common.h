// What the Gemma 2 and Gemma 3 text families share (src/model/families/gemma2.cpp, gemma3.cpp): their settings, the
// config.json keys both read, the block layout (four Gemma norms around attention and a GeGLU MLP, optional q/k
// norms) and the forward pass as transformers computes it: Gemma RMSNorm with a (1 + w) weight in fp32, embeddings
// scaled by sqrt(hidden_size), eager attention scaled by query_pre_attn_scalar^-0.5 with optional logit soft-capping,
// sliding-window layers with their own rotary base, and final logit soft-capping. Internal to the Gemma families.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "optima/io/model_config.h"
#include "optima/model/arch.h"
#include "optima/model/family.h"

namespace optima::gemma {

// Rotary frequencies of one kind of layer: theta^(-2i/head_dim), divided by `factor` (1 unless "linear" scaling).
struct Rope {
  double theta = 10000.0;
  double factor = 1.0;
};

struct GemmaSettings : FamilySettings {
  double norm_eps = 1e-6;
  double query_pre_attn_scalar = 256;
  std::optional<double> attn_softcap;   // tanh soft-capping of attention scores (Gemma 2 only applies it)
  std::optional<double> final_softcap;  // of the logits
  int64_t sliding_window = 4096;
  bool gelu_tanh = true;  // hidden_activation gelu_pytorch_tanh (true) or the exact gelu
  bool attention_bias = false;
  bool qk_norm = false;  // Gemma 3: RMSNorm of each query and key head
  Rope full_rope;
  Rope sliding_rope;
  std::vector<bool> sliding;  // per layer: a sliding-window ("sliding_attention") layer
  // Where the text model's tensors sit: "model." in a causal LM, "language_model.model." in a multimodal Gemma 3
  // checkpoint as transformers saves it, and the untied head's name there ("language_model.lm_head.weight").
  std::string prefix = "model.";
  std::string head = "lm_head.weight";
};

// Reads the keys both families share into `shape` and `settings` (defaults: transformers' config classes). The
// rotary settings, soft-capping and the layer pattern are left to each family.
void read_common(const ModelConfig& config, ModelShape& s, GemmaSettings& settings);
// "layer_types" when present (each "sliding_attention" or "full_attention", one per layer), else layer i slides
// when (i + 1) % pattern != 0; a sliding layer needs a positive sliding_window.
void read_layer_types(const ModelConfig& config, int64_t pattern, GemmaSettings& settings);
// A soft-capping value: `fallback` when the key is absent, none when it is null, else a positive number.
std::optional<double> read_softcap(const ModelConfig& config, const char* key, std::optional<double> fallback);
// One rotary entry (an object with rope_type or type, rope_theta, factor) named `where` in errors; only "default"
// and "linear" are computed, any other type is an input error naming the key and the type. A missing rope_theta
// keeps `rope.theta`.
void read_rope_entry(const std::string& where, const nlohmann::json& entry, Rope& rope);

// The family interface's layout and forward pass, shared; each family adds its name and read_shape.
class GemmaFamily : public Family {
 public:
  std::vector<LinearLayer> linear_layers(const ModelShape& s) const override;
  std::string block_prefix(const ModelShape& s, int64_t block) const override;
  std::vector<ExpectedTensor> block_tensors(const ModelShape& s, int64_t block) const override;
  std::vector<ExpectedTensor> global_tensors(const ModelShape& s) const override;
  std::unique_ptr<FamilyForward> make_forward(const ModelShape& shape, GlobalWeights globals,
                                              c10::Device device) const override;
};

}  // namespace optima::gemma
