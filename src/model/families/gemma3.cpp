// The Gemma 3 families: text-only (model_type gemma3_text, Gemma3ForCausalLM) and the text part of a multimodal
// checkpoint (model_type gemma3, Gemma3ForConditionalGeneration). Their config.json keys (RMSNorm of each query and
// key head, a local/global layer pattern, a rotary base for sliding-window layers and another, optionally linearly
// scaled, for full-attention layers); the layout and forward pass are the Gemma families' shared ones
// (gemma_common.h), as transformers' modeling_gemma3.py computes them.
//
// A multimodal checkpoint keeps its text model's keys in "text_config" and its tensors under
// "language_model.model." and "language_model.lm_head." (as transformers saves it); optima prunes and evaluates the
// text model only and carries the vision tower, the projector and anything else it does not declare to the output
// unchanged (ModelShape::copy_other_tensors). Text-only logits are the language model's through lm_head, which
// Gemma3ForConditionalGeneration computes without the final soft-capping and ties per the top-level
// tie_word_embeddings.

#include <memory>

#include "arch_helpers.h"
#include "gemma_common.h"
#include "optima/core/error.h"
#include "optima/model/family.h"

namespace optima {
namespace {

// Rotary settings of full-attention and sliding-window layers. transformers >= 5 writes "rope_parameters"
// {"full_attention": {...}, "sliding_attention": {...}}; older configs write "rope_theta" (full layers),
// "rope_local_base_freq" (sliding layers) and "rope_scaling" (merged into the full layers' entry), as
// Gemma3TextConfig.convert_rope_params_to_dict reads them.
void read_ropes(const ModelConfig& config, gemma::GemmaSettings& s) {
  const auto& json = config.json();
  s.full_rope.theta = config.value_or<double>("rope_theta", 1'000'000.0);
  s.sliding_rope.theta = config.value_or<double>("rope_local_base_freq", 10'000.0);
  nlohmann::json full = {{"rope_type", "default"}}, sliding = {{"rope_type", "default"}};
  std::string full_where = where_key(config, "rope_parameters") + ".full_attention";
  if (config.has("rope_parameters")) {
    const auto& params = json["rope_parameters"];
    const bool per_type =
        params.is_object() && (params.contains("full_attention") || params.contains("sliding_attention"));
    if (!per_type)
      fail_input(where_key(config, "rope_parameters"), "must hold an entry per layer type",
                 "an object with full_attention and sliding_attention", params.dump());
    if (params.contains("full_attention") && !params["full_attention"].is_null()) full = params["full_attention"];
    if (params.contains("sliding_attention") && !params["sliding_attention"].is_null())
      sliding = params["sliding_attention"];
  }
  if (config.has("rope_scaling")) {
    const auto& scaling = json["rope_scaling"];
    if (!scaling.is_object() || !full.is_object())
      fail_input(where_key(config, "rope_scaling"), "must be an object", "an object", scaling.dump());
    full.update(scaling);
    full_where = where_key(config, "rope_scaling");
  }
  gemma::read_rope_entry(full_where, full, s.full_rope);
  gemma::read_rope_entry(where_key(config, "rope_parameters") + ".sliding_attention", sliding, s.sliding_rope);
}

// The keys of a Gemma 3 text config (a gemma3_text config.json or a multimodal one's text_config).
std::shared_ptr<gemma::GemmaSettings> read_text_config(const ModelConfig& config, ModelShape& s) {
  auto settings = std::make_shared<gemma::GemmaSettings>();
  gemma::read_common(config, s, *settings);
  settings->qk_norm = true;
  // Gemma 3's attention never applies attn_logit_softcapping (transformers does not pass it to the attention
  // function), so the key is read by nobody; the final soft-capping is off unless set.
  settings->final_softcap = gemma::read_softcap(config, "final_logit_softcapping", std::nullopt);
  gemma::read_layer_types(config, positive_or(config, "sliding_window_pattern", 6), *settings);
  read_ropes(config, *settings);
  return settings;
}

class Gemma3TextFamily : public gemma::GemmaFamily {
 public:
  std::string_view name() const override { return "gemma3_text"; }

  void read_shape(const ModelConfig& config, ModelShape& s) const override { s.settings = read_text_config(config, s); }
};

class Gemma3MultimodalFamily : public gemma::GemmaFamily {
 public:
  std::string_view name() const override { return "gemma3"; }

  void read_shape(const ModelConfig& config, ModelShape& s) const override {
    const auto& json = config.json();
    if (!json.contains("text_config") || !json["text_config"].is_object())
      fail_input(where_key(config, "text_config"), "a multimodal Gemma 3 config needs the text model's config",
                 "an object", json.contains("text_config") ? json["text_config"].dump() : "no such key");
    // Errors about a text key name the file and text_config.
    const ModelConfig text(json["text_config"], config.path().string() + " text_config");
    auto settings = read_text_config(text, s);
    settings->prefix = "language_model.model.";
    settings->head = "language_model.lm_head.weight";
    // Gemma3ForConditionalGeneration applies lm_head alone (no final soft-capping) and ties it per the top level.
    settings->final_softcap.reset();
    s.tie_word_embeddings = config.value_or<bool>("tie_word_embeddings", true);
    s.copy_other_tensors = true;
    s.settings = std::move(settings);
  }
};

}  // namespace

const Family& gemma3_text_family() {
  static const Gemma3TextFamily family;
  return family;
}

const Family& gemma3_family() {
  static const Gemma3MultimodalFamily family;
  return family;
}

}  // namespace optima
