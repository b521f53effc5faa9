// The Gemma 3 text family (model_type gemma3_text): its config.json keys (RMSNorm of each query and key head, a
// local/global layer pattern, a rotary base for sliding-window layers and another, optionally linearly scaled, for
// full-attention layers); the layout and forward pass are the Gemma families' shared ones (gemma_common.h), as
// transformers' modeling_gemma3.py (Gemma3ForCausalLM) computes them. A multimodal Gemma 3 checkpoint (model_type
// gemma3, a vision tower beside the text model) is refused: its text weights live under another prefix and its
// vision tensors would have to be carried to the output unchanged.
#include <fmt/format.h>

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

class Gemma3TextFamily : public gemma::GemmaFamily {
 public:
  std::string_view name() const override { return "gemma3_text"; }

  void read_shape(const ModelConfig& config, ModelShape& s) const override {
    if (s.model_type == "gemma3")
      fail_input(where_key(config, "model_type"),
                 "multimodal Gemma 3 checkpoints (a vision tower beside the text model) are not supported; a "
                 "text-only checkpoint (Gemma3ForCausalLM) is",
                 "gemma3_text", fmt::format("gemma3{}", config.has("vision_config") ? " with a vision_config" : ""));
    auto settings = std::make_shared<gemma::GemmaSettings>();
    gemma::read_common(config, s, *settings);
    settings->qk_norm = true;
    // Gemma 3's attention never applies attn_logit_softcapping (transformers does not pass it to the attention
    // function), so the key is read by nobody; the final soft-capping is off unless set.
    settings->final_softcap = gemma::read_softcap(config, "final_logit_softcapping", std::nullopt);
    gemma::read_layer_types(config, positive_or(config, "sliding_window_pattern", 6), *settings);
    read_ropes(config, *settings);
    s.settings = std::move(settings);
  }
};

}  // namespace

const Family& gemma3_text_family() {
  static const Gemma3TextFamily family;
  return family;
}

}  // namespace optima
