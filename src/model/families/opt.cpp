// The OPT family (model_type opt): config.json keys, the block's linear layers, tensor names and the forward pass,
// as transformers' OPTForCausalLM computes it (pre- or post-LayerNorm blocks, learned positions offset by 2, an
// optional projection between the embedding width and the hidden size).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include "arch_helpers.h"
#include "ops.h"
#include "optima/core/error.h"
#include "optima/model/family.h"

namespace optima {
namespace {

// The full name of a tensor outside the blocks, all of which but an untied lm_head live under "model.decoder.".
std::string decoder_tensor(std::string_view name) {
  return "model.decoder." + std::string(name);
}

struct OptSettings : FamilySettings {
  int64_t word_embed_proj_dim = 0;  // the embedding width, projected to and from hidden_size when it differs
  bool layer_norm_before = true;    // pre-LayerNorm blocks (false: OPT-350M's post-LayerNorm)
  bool final_layer_norm = true;
  bool linear_bias = true;
};

const OptSettings& settings_of(const ModelShape& shape) {
  return family_settings<OptSettings>(shape);
}

class OptForward : public FamilyForward {
 public:
  OptForward(const ModelShape& shape, GlobalWeights globals)
      : shape_(shape), settings_(settings_of(shape)), globals_(std::move(globals)) {}

  at::Tensor embed(const at::Tensor& tokens) const override {
    at::Tensor h = at::embedding(global("embed_tokens.weight"), tokens);
    if (has_projections()) h = at::linear(h, global("project_in.weight"));
    // Learned positions are offset by 2 (a fairseq legacy): position p reads row p + 2.
    const at::Tensor positions = at::arange(2, tokens.size(1) + 2, tokens.options());
    return h + at::embedding(global("embed_positions.weight"), positions).unsqueeze(0);
  }

  at::Tensor block(const BlockWeights& b, const at::Tensor& hidden, const SiteHook& hook) const override {
    const bool pre = settings_.layer_norm_before;
    auto norm = [&](const at::Tensor& x, const std::string& name) {
      return ops::layer_norm(x, b.get(name + ".weight"), b.get(name + ".bias"));
    };
    at::Tensor h = hidden;
    at::Tensor residual = h;
    if (pre) h = norm(h, "self_attn_layer_norm");
    h = residual + attention(b, h, hook);
    if (!pre) h = norm(h, "self_attn_layer_norm");
    residual = h;
    if (pre) h = norm(h, "final_layer_norm");
    if (hook) hook(InputSite::kMlpInput, h);
    const at::Tensor mid = at::relu(ops::linear(h, b.get("fc1.weight"), b.find("fc1.bias")));
    if (hook) hook(InputSite::kMlpHidden, mid);
    h = residual + ops::linear(mid, b.get("fc2.weight"), b.find("fc2.bias"));
    if (!pre) h = norm(h, "final_layer_norm");
    return h;
  }

  at::Tensor logits(const at::Tensor& hidden) const override {
    at::Tensor h = hidden;
    if (settings_.final_layer_norm)
      h = ops::layer_norm(h, global("final_layer_norm.weight"), global("final_layer_norm.bias"));
    if (has_projections()) h = at::linear(h, global("project_out.weight"));
    const at::Tensor& head = shape_.tie_word_embeddings ? global("embed_tokens.weight") : globals_.at("lm_head.weight");
    return at::linear(h, head);
  }

 private:
  const at::Tensor& global(std::string_view name) const { return globals_.at(decoder_tensor(name)); }
  bool has_projections() const { return globals_.count(decoder_tensor("project_in.weight")) > 0; }

  at::Tensor attention(const BlockWeights& b, const at::Tensor& x, const SiteHook& hook) const {
    if (hook) hook(InputSite::kAttentionInput, x);
    auto project = [&](const std::string& name) {
      const at::Tensor y =
          ops::linear(x, b.get("self_attn." + name + ".weight"), b.find("self_attn." + name + ".bias"));
      return ops::split_heads(y, shape_.num_heads, shape_.head_dim);
    };
    const at::Tensor q = project("q_proj"), k = project("k_proj"), v = project("v_proj");
    const at::Tensor out = ops::causal_attention(q, k, v);
    if (hook) hook(InputSite::kAttentionOutput, out);
    return ops::linear(out, b.get("self_attn.out_proj.weight"), b.find("self_attn.out_proj.bias"));
  }

  ModelShape shape_;
  OptSettings settings_;
  GlobalWeights globals_;
};

class OptFamily : public Family {
 public:
  std::string_view name() const override { return "opt"; }

  void read_shape(const ModelConfig& config, ModelShape& s) const override {
    auto settings = std::make_shared<OptSettings>();
    s.hidden_size = require_positive(config, "hidden_size");
    s.num_layers = require_positive(config, "num_hidden_layers");
    s.num_heads = require_positive(config, "num_attention_heads");
    s.num_kv_heads = s.num_heads;
    s.intermediate_size = require_positive(config, "ffn_dim");
    s.vocab_size = require_positive(config, "vocab_size");
    s.max_positions = require_positive(config, "max_position_embeddings");
    settings->word_embed_proj_dim = positive_or(config, "word_embed_proj_dim", s.hidden_size);
    settings->layer_norm_before = config.value_or<bool>("do_layer_norm_before", true);
    settings->final_layer_norm =
        settings->layer_norm_before && !config.value_or<bool>("_remove_final_layer_norm", false);
    settings->linear_bias = config.value_or<bool>("enable_bias", true);
    s.tie_word_embeddings = config.value_or<bool>("tie_word_embeddings", true);
    if (!config.value_or<bool>("layer_norm_elementwise_affine", true))
      fail_input(where_key(config, "layer_norm_elementwise_affine"), "unsupported value", "true", "false");
    const std::string act = config.value_or<std::string>("activation_function", "relu");
    if (act != "relu") fail_input(where_key(config, "activation_function"), "unsupported activation", "relu", act);
    if (s.hidden_size % s.num_heads != 0)
      fail_input(where_key(config, "num_attention_heads"), "must divide hidden_size",
                 fmt::format("a divisor of {}", s.hidden_size), std::to_string(s.num_heads));
    s.head_dim = s.hidden_size / s.num_heads;
    s.settings = std::move(settings);
  }

  std::vector<LinearLayer> linear_layers(const ModelShape& s) const override {
    const int64_t h = s.hidden_size, ffn = s.intermediate_size;
    const bool b = settings_of(s).linear_bias;
    return {{"self_attn.q_proj", InputSite::kAttentionInput, h, h, b},
            {"self_attn.k_proj", InputSite::kAttentionInput, h, h, b},
            {"self_attn.v_proj", InputSite::kAttentionInput, h, h, b},
            {"self_attn.out_proj", InputSite::kAttentionOutput, h, h, b},
            {"fc1", InputSite::kMlpInput, ffn, h, b},
            {"fc2", InputSite::kMlpHidden, h, ffn, b}};
  }

  std::string block_prefix(const ModelShape& /*shape*/, int64_t block) const override {
    return decoder_tensor(fmt::format("layers.{}.", block));
  }

  std::vector<ExpectedTensor> block_tensors(const ModelShape& s, int64_t block) const override {
    const std::string p = block_prefix(s, block);
    std::vector<ExpectedTensor> out;
    append_linear_tensors(p, linear_layers(s), out);
    for (const char* norm : {"self_attn_layer_norm", "final_layer_norm"}) {
      out.push_back({p + norm + ".weight", {s.hidden_size}, TensorInit::kOnes});
      out.push_back({p + norm + ".bias", {s.hidden_size}, TensorInit::kZeros});
    }
    return out;
  }

  std::vector<ExpectedTensor> global_tensors(const ModelShape& s) const override {
    const OptSettings& settings = settings_of(s);
    const int64_t h = s.hidden_size, e = settings.word_embed_proj_dim;
    std::vector<ExpectedTensor> out;
    out.push_back({decoder_tensor("embed_tokens.weight"), {s.vocab_size, e}, TensorInit::kNormal});
    out.push_back({decoder_tensor("embed_positions.weight"), {s.max_positions + 2, h}, TensorInit::kNormal});
    if (e != h) {
      out.push_back({decoder_tensor("project_in.weight"), {h, e}, TensorInit::kNormal});
      out.push_back({decoder_tensor("project_out.weight"), {e, h}, TensorInit::kNormal});
    }
    if (settings.final_layer_norm) {
      out.push_back({decoder_tensor("final_layer_norm.weight"), {h}, TensorInit::kOnes});
      out.push_back({decoder_tensor("final_layer_norm.bias"), {h}, TensorInit::kZeros});
    }
    if (!s.tie_word_embeddings) out.push_back({"lm_head.weight", {s.vocab_size, e}, TensorInit::kNormal});
    return out;
  }

  std::unique_ptr<FamilyForward> make_forward(const ModelShape& shape, GlobalWeights globals,
                                              c10::Device /*device*/) const override {
    return std::make_unique<OptForward>(shape, std::move(globals));
  }
};

}  // namespace

const Family& opt_family() {
  static const OptFamily family;
  return family;
}

}  // namespace optima
