// The LLaMA family (model_type llama, mistral, qwen2): config.json keys (rotary scaling included), the block's
// linear layers, tensor names and the forward pass as transformers computes it: RMSNorm, rotary embeddings in the
// rotate-half layout (default, linear or LLaMA-3 frequency scaling), grouped-query attention and a SwiGLU MLP.
// Mistral is LLaMA's layout; Qwen2 adds q/k/v biases.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>

#include "arch_helpers.h"
#include "ops.h"
#include "optima/core/error.h"
#include "optima/model/family.h"
#include "rope.h"

namespace optima {
namespace {

struct LlamaSettings : FamilySettings {
  bool qkv_bias = false;  // Qwen2, or attention_bias
  bool o_bias = false;    // attention_bias
  bool mlp_bias = false;
  double norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::string rope_type = "default";  // "default", "linear" or "llama3"
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0;           // llama3
  double rope_high_freq_factor = 4.0;          // llama3
  int64_t rope_original_max_positions = 8192;  // llama3
};

const LlamaSettings& settings_of(const ModelShape& shape) {
  return family_settings<LlamaSettings>(shape);
}

// --- config.json ---------------------------------------------------------------------------------------------

// Rotary settings: transformers >= 5 writes "rope_parameters" {rope_type, rope_theta, ...}; older configs write
// "rope_theta" and "rope_scaling" {type|rope_type, factor, ...}. Both are accepted.
void read_rope(const ModelConfig& config, LlamaSettings& s) {
  const LlamaSettings defaults;  // the one source of every rotary default: LlamaSettings' initialisers
  const auto& json = config.json();
  const char* key =
      json.contains("rope_parameters") && !json["rope_parameters"].is_null() ? "rope_parameters" : "rope_scaling";
  if (!json.contains(key) || json[key].is_null()) return;
  const std::string where = where_key(config, key);
  const auto& rope = json[key];
  if (!rope.is_object()) fail_input(where, "must be an object", "an object", rope.dump());
  auto number = [&](const char* name, double fallback) {
    if (!rope.contains(name) || rope[name].is_null()) return fallback;
    if (!rope[name].is_number()) fail_input(where + "." + name, "wrong type", "a number", rope[name].dump());
    return rope[name].get<double>();
  };
  s.rope_theta = number("rope_theta", s.rope_theta);
  const auto& type = rope.contains("rope_type") ? rope["rope_type"] : rope.value("type", nlohmann::json("default"));
  if (!type.is_string()) fail_input(where + ".rope_type", "wrong type", "a string", type.dump());
  s.rope_type = type.get<std::string>();
  if (s.rope_type != "default" && s.rope_type != "linear" && s.rope_type != "llama3")
    fail_input(where + ".rope_type", "unsupported rotary scaling", "default, linear or llama3", s.rope_type);
  s.rope_factor = number("factor", defaults.rope_factor);
  s.rope_low_freq_factor = number("low_freq_factor", defaults.rope_low_freq_factor);
  s.rope_high_freq_factor = number("high_freq_factor", defaults.rope_high_freq_factor);
  // A count written as a JSON number; converting an out-of-range double to an integer is undefined, so check first.
  const double original =
      number("original_max_position_embeddings", static_cast<double>(defaults.rope_original_max_positions));
  if (!(original >= 1 && original <= static_cast<double>(kMaxModelSize)) || original != std::floor(original))
    fail_input(where + ".original_max_position_embeddings", "must be a positive integer",
               fmt::format("an integer in [1, {}]", kMaxModelSize), fmt::format("{}", original));
  s.rope_original_max_positions = static_cast<int64_t>(original);
  if (s.rope_factor <= 0) fail_input(where + ".factor", "must be positive", "> 0", std::to_string(s.rope_factor));
}

// head_dim is explicit in some configs (and may then differ from hidden_size / heads).
int64_t read_head_dim(const ModelConfig& config, const ModelShape& s) {
  if (config.has("head_dim")) return require_positive(config, "head_dim");
  if (s.hidden_size % s.num_heads != 0)
    fail_input(where_key(config, "num_attention_heads"), "must divide hidden_size when head_dim is absent",
               fmt::format("a divisor of {}", s.hidden_size), std::to_string(s.num_heads));
  return s.hidden_size / s.num_heads;
}

// --- forward pass --------------------------------------------------------------------------------------------

// Rotary inverse frequencies [head_dim / 2] in fp32 on `device`, scaled as the config says.
at::Tensor rotary_inv_freq(const ModelShape& shape, const LlamaSettings& s, c10::Device device) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor inv_freq = 1.0 / at::pow(s.rope_theta, at::arange(0, shape.head_dim, 2, f32.dtype(at::kLong)).to(f32) /
                                                        static_cast<double>(shape.head_dim));
  if (s.rope_type == "linear") inv_freq = inv_freq / s.rope_factor;
  if (s.rope_type == "llama3")
    inv_freq = rope::llama3_scaling(inv_freq, s.rope_factor, s.rope_low_freq_factor, s.rope_high_freq_factor,
                                    s.rope_original_max_positions);
  return inv_freq;
}

class LlamaForward : public FamilyForward {
 public:
  LlamaForward(const ModelShape& shape, GlobalWeights globals, c10::Device device)
      : shape_(shape),
        settings_(settings_of(shape)),
        globals_(std::move(globals)),
        inv_freq_(rotary_inv_freq(shape, settings_, device)) {}

  at::Tensor embed(const at::Tensor& tokens) const override {
    return at::embedding(globals_.at("model.embed_tokens.weight"), tokens);
  }

  at::Tensor block(const BlockWeights& b, const at::Tensor& hidden, const SiteHook& hook) const override {
    at::Tensor h = hidden;
    at::Tensor residual = h;
    h = residual + attention(b, ops::rms_norm(h, b.get("input_layernorm.weight"), settings_.norm_eps), hook);
    residual = h;
    const at::Tensor x = ops::rms_norm(h, b.get("post_attention_layernorm.weight"), settings_.norm_eps);
    if (hook) hook(InputSite::kMlpInput, x);
    const std::vector<at::Tensor> gate_up =
        ops::linears(x, {b.get("mlp.gate_proj.weight"), b.get("mlp.up_proj.weight")},
                     {b.find("mlp.gate_proj.bias"), b.find("mlp.up_proj.bias")});
    const at::Tensor mid = at::silu(gate_up[0]) * gate_up[1];
    if (hook) hook(InputSite::kMlpHidden, mid);
    return residual + ops::linear(mid, b.get("mlp.down_proj.weight"), b.find("mlp.down_proj.bias"));
  }

  at::Tensor logits(const at::Tensor& hidden) const override {
    const at::Tensor h = ops::rms_norm(hidden, globals_.at("model.norm.weight"), settings_.norm_eps);
    const std::string head = shape_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    return at::linear(h, globals_.at(head));
  }

 private:
  at::Tensor attention(const BlockWeights& b, const at::Tensor& x, const SiteHook& hook) const {
    if (hook) hook(InputSite::kAttentionInput, x);
    const std::vector<at::Tensor> qkv = ops::linears(
        x, {b.get("self_attn.q_proj.weight"), b.get("self_attn.k_proj.weight"), b.get("self_attn.v_proj.weight")},
        {b.find("self_attn.q_proj.bias"), b.find("self_attn.k_proj.bias"), b.find("self_attn.v_proj.bias")});
    at::Tensor q = ops::split_heads(qkv[0], shape_.num_heads, shape_.head_dim);
    at::Tensor k = ops::split_heads(qkv[1], shape_.num_kv_heads, shape_.head_dim);
    const at::Tensor v = ops::split_heads(qkv[2], shape_.num_kv_heads, shape_.head_dim);
    const ops::RotaryTables rotary = ops::rotary_tables(inv_freq_, x.size(1), q.scalar_type());
    q = ops::apply_rotary(q, rotary);
    k = ops::apply_rotary(k, rotary);
    const at::Tensor out = ops::causal_attention(q, k, v);
    if (hook) hook(InputSite::kAttentionOutput, out);
    return ops::linear(out, b.get("self_attn.o_proj.weight"), b.find("self_attn.o_proj.bias"));
  }

  ModelShape shape_;
  LlamaSettings settings_;
  GlobalWeights globals_;
  at::Tensor inv_freq_;  // rotary inverse frequencies [head_dim / 2], fp32
};

// --- the family ----------------------------------------------------------------------------------------------

class LlamaFamily : public Family {
 public:
  std::string_view name() const override { return "llama"; }

  void read_shape(const ModelConfig& config, ModelShape& s) const override {
    auto settings = std::make_shared<LlamaSettings>();
    s.hidden_size = require_positive(config, "hidden_size");
    s.num_layers = require_positive(config, "num_hidden_layers");
    s.num_heads = require_positive(config, "num_attention_heads");
    s.num_kv_heads = positive_or(config, "num_key_value_heads", s.num_heads);
    s.intermediate_size = require_positive(config, "intermediate_size");
    s.vocab_size = require_positive(config, "vocab_size");
    s.max_positions = require_positive(config, "max_position_embeddings");
    settings->norm_eps = config.value_or<double>("rms_norm_eps", settings->norm_eps);
    settings->rope_theta = config.value_or<double>("rope_theta", settings->rope_theta);
    s.tie_word_embeddings = config.value_or<bool>("tie_word_embeddings", false);
    const bool attention_bias = config.value_or<bool>("attention_bias", false);
    settings->qkv_bias = s.model_type == "qwen2" || attention_bias;
    settings->o_bias = attention_bias;
    settings->mlp_bias = config.value_or<bool>("mlp_bias", false);
    read_rope(config, *settings);
    const std::string act = config.value_or<std::string>("hidden_act", "silu");
    if (act != "silu") fail_input(where_key(config, "hidden_act"), "unsupported activation", "silu", act);
    if (s.num_kv_heads <= 0 || s.num_heads % s.num_kv_heads != 0)
      fail_input(where_key(config, "num_key_value_heads"), "must divide num_attention_heads",
                 fmt::format("a divisor of {}", s.num_heads), std::to_string(s.num_kv_heads));
    s.head_dim = read_head_dim(config, s);
    s.settings = std::move(settings);
  }

  std::vector<LinearLayer> linear_layers(const ModelShape& s) const override {
    const LlamaSettings& b = settings_of(s);
    const int64_t h = s.hidden_size, ffn = s.intermediate_size;
    const int64_t q = s.num_heads * s.head_dim, kv = s.num_kv_heads * s.head_dim;
    return {{"self_attn.q_proj", InputSite::kAttentionInput, q, h, b.qkv_bias},
            {"self_attn.k_proj", InputSite::kAttentionInput, kv, h, b.qkv_bias},
            {"self_attn.v_proj", InputSite::kAttentionInput, kv, h, b.qkv_bias},
            {"self_attn.o_proj", InputSite::kAttentionOutput, h, q, b.o_bias},
            {"mlp.gate_proj", InputSite::kMlpInput, ffn, h, b.mlp_bias},
            {"mlp.up_proj", InputSite::kMlpInput, ffn, h, b.mlp_bias},
            {"mlp.down_proj", InputSite::kMlpHidden, h, ffn, b.mlp_bias}};
  }

  std::string block_prefix(const ModelShape& /*shape*/, int64_t block) const override {
    return llama_layout_block_prefix(block);
  }

  std::vector<ExpectedTensor> block_tensors(const ModelShape& s, int64_t block) const override {
    const std::string p = block_prefix(s, block);
    std::vector<ExpectedTensor> out;
    append_linear_tensors(p, linear_layers(s), out);
    out.push_back({p + "input_layernorm.weight", {s.hidden_size}, TensorInit::kOnes});
    out.push_back({p + "post_attention_layernorm.weight", {s.hidden_size}, TensorInit::kOnes});
    return out;
  }

  std::vector<ExpectedTensor> global_tensors(const ModelShape& s) const override {
    return llama_layout_global_tensors(s);
  }

  std::unique_ptr<FamilyForward> make_forward(const ModelShape& shape, GlobalWeights globals,
                                              c10::Device device) const override {
    return std::make_unique<LlamaForward>(shape, std::move(globals), device);
  }
};

}  // namespace

const Family& llama_family() {
  static const LlamaFamily family;
  return family;
}

}  // namespace optima
