// The Gemma families' shared config reading, layout and forward pass (see gemma_common.h), following transformers'
// modeling_gemma2.py and modeling_gemma3.py operation by operation, so that reduced precision rounds where they do.
#include "gemma_common.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "arch_helpers.h"
#include "ops.h"
#include "optima/core/error.h"

namespace optima::gemma {
namespace {

const GemmaSettings& settings_of(const ModelShape& shape) {
  return family_settings<GemmaSettings>(shape);
}

// Gemma's RMSNorm: normalised and scaled by (1 + w) in fp32, then cast back (Gemma2RMSNorm / Gemma3RMSNorm).
at::Tensor gemma_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return (normed * (1.0 + weight.to(at::kFloat))).to(x.scalar_type());
}

// x / cap -> tanh -> * cap, in x's dtype.
at::Tensor softcap(const at::Tensor& x, double cap) {
  return at::tanh(x / cap) * cap;
}

// Rotary inverse frequencies [head_dim / 2] in fp32, as transformers' default and linear rope initialisers.
at::Tensor inv_freq(const Rope& rope, int64_t head_dim, c10::Device device) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  const at::Tensor exponents = at::arange(0, head_dim, 2, f32.dtype(at::kLong)).to(f32) / static_cast<double>(head_dim);
  at::Tensor freq = 1.0 / at::pow(rope.theta, exponents);
  if (rope.factor != 1.0) freq = freq / rope.factor;
  return freq;
}

// Where key k of position q may attend: k <= q, and on sliding layers (window > 0) also k > q - window.
at::Tensor allowed_keys(int64_t seq, int64_t window, c10::Device device) {
  const at::Tensor pos = at::arange(seq, at::TensorOptions().dtype(at::kLong).device(device));
  const at::Tensor q = pos.unsqueeze(1), k = pos.unsqueeze(0);
  const at::Tensor causal = k <= q;
  return window > 0 ? causal.logical_and(k > q - window) : causal;
}

class GemmaForward : public FamilyForward {
 public:
  GemmaForward(const ModelShape& shape, GlobalWeights globals, c10::Device device)
      : shape_(shape),
        settings_(settings_of(shape)),
        globals_(std::move(globals)),
        full_inv_freq_(inv_freq(settings_.full_rope, shape.head_dim, device)),
        sliding_inv_freq_(inv_freq(settings_.sliding_rope, shape.head_dim, device)) {}

  at::Tensor embed(const at::Tensor& tokens) const override {
    const at::Tensor& table = globals_.at(settings_.prefix + "embed_tokens.weight");
    // transformers keeps sqrt(hidden_size) as an fp32 buffer and casts it to the weights' dtype before multiplying.
    const float normalizer = static_cast<float>(std::sqrt(static_cast<double>(shape_.hidden_size)));
    return at::embedding(table, tokens) *
           at::scalar_tensor(normalizer, table.options().dtype(at::kFloat)).to(table.scalar_type());
  }

  at::Tensor block(const BlockWeights& b, const at::Tensor& hidden, const SiteHook& hook) const override {
    const double eps = settings_.norm_eps;
    at::Tensor residual = hidden;
    at::Tensor h = attention(b, gemma_norm(hidden, b.get("input_layernorm.weight"), eps), hook);
    h = residual + gemma_norm(h, b.get("post_attention_layernorm.weight"), eps);
    residual = h;
    const at::Tensor x = gemma_norm(h, b.get("pre_feedforward_layernorm.weight"), eps);
    if (hook) hook(InputSite::kMlpInput, x);
    const at::Tensor gate = ops::linear(x, b.get("mlp.gate_proj.weight"), at::Tensor());
    const at::Tensor up = ops::linear(x, b.get("mlp.up_proj.weight"), at::Tensor());
    const at::Tensor mid = at::gelu(gate, settings_.gelu_tanh ? "tanh" : "none") * up;
    if (hook) hook(InputSite::kMlpHidden, mid);
    const at::Tensor down = ops::linear(mid, b.get("mlp.down_proj.weight"), at::Tensor());
    return residual + gemma_norm(down, b.get("post_feedforward_layernorm.weight"), eps);
  }

  at::Tensor logits(const at::Tensor& hidden) const override {
    const at::Tensor h = gemma_norm(hidden, globals_.at(settings_.prefix + "norm.weight"), settings_.norm_eps);
    const std::string head = shape_.tie_word_embeddings ? settings_.prefix + "embed_tokens.weight" : settings_.head;
    const at::Tensor out = at::linear(h, globals_.at(head));
    return settings_.final_softcap ? softcap(out, *settings_.final_softcap) : out;
  }

 private:
  at::Tensor attention(const BlockWeights& b, const at::Tensor& x, const SiteHook& hook) const {
    if (hook) hook(InputSite::kAttentionInput, x);
    auto project = [&](const std::string& name, int64_t heads) {
      const at::Tensor y =
          ops::linear(x, b.get("self_attn." + name + ".weight"), b.find("self_attn." + name + ".bias"));
      return ops::split_heads(y, heads, shape_.head_dim);
    };
    at::Tensor q = project("q_proj", shape_.num_heads);
    at::Tensor k = project("k_proj", shape_.num_kv_heads);
    const at::Tensor v = project("v_proj", shape_.num_kv_heads);
    if (settings_.qk_norm) {
      q = gemma_norm(q, b.get("self_attn.q_norm.weight"), settings_.norm_eps);
      k = gemma_norm(k, b.get("self_attn.k_norm.weight"), settings_.norm_eps);
    }
    const bool sliding = settings_.sliding[static_cast<size_t>(b.index)];
    const ops::RotaryTables rotary =
        ops::rotary_tables(sliding ? sliding_inv_freq_ : full_inv_freq_, x.size(1), q.scalar_type());
    q = ops::apply_rotary(q, rotary);
    k = ops::apply_rotary(k, rotary);
    const at::Tensor out = eager_attention(q, ops::repeat_kv_heads(k, shape_.num_heads),
                                           ops::repeat_kv_heads(v, shape_.num_heads), sliding);
    if (hook) hook(InputSite::kAttentionOutput, out);
    return ops::linear(out, b.get("self_attn.o_proj.weight"), b.find("self_attn.o_proj.bias"));
  }

  // transformers' eager_attention_forward: scores in the compute dtype, scaled, soft-capped, masked, softmax in fp32
  // cast back, times v. [batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim].
  at::Tensor eager_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool sliding) const {
    const int64_t batch = q.size(0), seq = q.size(2);
    at::Tensor scores = at::matmul(q, k.transpose(2, 3)) * std::pow(settings_.query_pre_attn_scalar, -0.5);
    if (settings_.attn_softcap) scores = softcap(scores, *settings_.attn_softcap);
    const int64_t window = sliding ? settings_.sliding_window : 0;
    scores = scores.masked_fill(allowed_keys(seq, window, q.device()).logical_not(),
                                -std::numeric_limits<double>::infinity());
    const at::Tensor weights = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
    return at::matmul(weights, v).transpose(1, 2).reshape({batch, seq, -1});
  }

  ModelShape shape_;
  GemmaSettings settings_;
  GlobalWeights globals_;
  at::Tensor full_inv_freq_;     // rotary inverse frequencies of full-attention layers, fp32
  at::Tensor sliding_inv_freq_;  // and of sliding-window layers
};

}  // namespace

// --- config.json ---------------------------------------------------------------------------------------------

void read_common(const ModelConfig& config, ModelShape& s, GemmaSettings& settings) {
  s.hidden_size = require_positive(config, "hidden_size");
  s.num_layers = require_positive(config, "num_hidden_layers");
  s.num_heads = require_positive(config, "num_attention_heads");
  s.num_kv_heads = positive_or(config, "num_key_value_heads", s.num_heads);
  s.intermediate_size = require_positive(config, "intermediate_size");
  s.vocab_size = require_positive(config, "vocab_size");
  s.max_positions = require_positive(config, "max_position_embeddings");
  s.head_dim = positive_or(config, "head_dim", 256);  // the config classes' default, not hidden / heads
  s.tie_word_embeddings = config.value_or<bool>("tie_word_embeddings", true);
  if (s.num_heads % s.num_kv_heads != 0)
    fail_input(where_key(config, "num_key_value_heads"), "must divide num_attention_heads",
               fmt::format("a divisor of {}", s.num_heads), std::to_string(s.num_kv_heads));
  settings.norm_eps = config.value_or<double>("rms_norm_eps", settings.norm_eps);
  settings.query_pre_attn_scalar = config.value_or<double>("query_pre_attn_scalar", settings.query_pre_attn_scalar);
  if (!(settings.query_pre_attn_scalar > 0))
    fail_input(where_key(config, "query_pre_attn_scalar"), "must be positive", "> 0",
               fmt::format("{}", settings.query_pre_attn_scalar));
  settings.attention_bias = config.value_or<bool>("attention_bias", false);
  // A null activation is refused too: transformers has no activation for it.
  const auto& json = config.json();
  const std::string act = json.contains("hidden_activation") && json["hidden_activation"].is_null()
                              ? "null"
                              : config.value_or<std::string>("hidden_activation", "gelu_pytorch_tanh");
  if (act != "gelu_pytorch_tanh" && act != "gelu")
    fail_input(where_key(config, "hidden_activation"), "unsupported activation", "gelu_pytorch_tanh or gelu", act);
  settings.gelu_tanh = act == "gelu_pytorch_tanh";
  if (config.value_or<bool>("use_bidirectional_attention", false))
    fail_input(where_key(config, "use_bidirectional_attention"), "bidirectional attention is not supported", "false",
               "true");
}

void read_layer_types(const ModelConfig& config, int64_t pattern, GemmaSettings& settings) {
  const auto& json = config.json();
  const int64_t layers = config.require<int64_t>("num_hidden_layers");
  settings.sliding.clear();
  if (config.has("layer_types")) {
    const auto& types = json["layer_types"];
    if (!types.is_array() || static_cast<int64_t>(types.size()) != layers)
      fail_input(where_key(config, "layer_types"), "must list one type per layer",
                 fmt::format("an array of {} strings", layers), types.dump());
    for (const auto& t : types) {
      const std::string type = t.is_string() ? t.get<std::string>() : t.dump();
      if (type != "sliding_attention" && type != "full_attention")
        fail_input(where_key(config, "layer_types"), "unsupported layer type", "sliding_attention or full_attention",
                   type);
      settings.sliding.push_back(type == "sliding_attention");
    }
  } else {
    for (int64_t i = 0; i < layers; ++i) settings.sliding.push_back((i + 1) % pattern != 0);
  }
  const bool any_sliding = std::find(settings.sliding.begin(), settings.sliding.end(), true) != settings.sliding.end();
  if (!any_sliding) return;
  if (json.contains("sliding_window") && json["sliding_window"].is_null())
    fail_input(where_key(config, "sliding_window"), "sliding-window layers need a window", "a positive integer",
               "null");
  settings.sliding_window = positive_or(config, "sliding_window", settings.sliding_window);
}

std::optional<double> read_softcap(const ModelConfig& config, const char* key, std::optional<double> fallback) {
  if (!config.json().contains(key)) return fallback;
  const std::optional<double> value = config.optional<double>(key);
  if (value && !(*value > 0))
    fail_input(where_key(config, key), "must be positive or null", "> 0", std::to_string(*value));
  return value;
}

void read_rope_entry(const std::string& where, const nlohmann::json& entry, Rope& rope) {
  if (!entry.is_object()) fail_input(where, "must be an object", "an object", entry.dump());
  auto number = [&](const char* name) -> std::optional<double> {
    if (!entry.contains(name) || entry[name].is_null()) return std::nullopt;
    if (!entry[name].is_number()) fail_input(where + "." + name, "wrong type", "a number", entry[name].dump());
    return entry[name].get<double>();
  };
  const nlohmann::json type_json =
      entry.contains("rope_type") ? entry["rope_type"] : entry.value("type", nlohmann::json("default"));
  if (!type_json.is_string()) fail_input(where + ".rope_type", "wrong type", "a string", type_json.dump());
  const std::string type = type_json.get<std::string>();
  if (type != "default" && type != "linear")
    fail_input(where + ".rope_type", "unsupported rotary scaling", "default or linear", type);
  rope.theta = number("rope_theta").value_or(rope.theta);
  if (!(rope.theta > 0)) fail_input(where + ".rope_theta", "must be positive", "> 0", fmt::format("{}", rope.theta));
  const double partial = number("partial_rotary_factor").value_or(1.0);
  if (partial != 1.0)
    fail_input(where + ".partial_rotary_factor", "partial rotary embeddings are not supported", "1",
               fmt::format("{}", partial));
  rope.factor = 1.0;
  if (type == "linear") {
    const std::optional<double> factor = number("factor");
    if (!factor) fail_input(where + ".factor", "linear rotary scaling needs a factor", "a number > 0", "none");
    if (!(*factor > 0)) fail_input(where + ".factor", "must be positive", "> 0", fmt::format("{}", *factor));
    rope.factor = *factor;
  }
}

// --- layout --------------------------------------------------------------------------------------------------

std::vector<LinearLayer> GemmaFamily::linear_layers(const ModelShape& s) const {
  const bool bias = settings_of(s).attention_bias;
  const int64_t h = s.hidden_size, ffn = s.intermediate_size;
  const int64_t q = s.num_heads * s.head_dim, kv = s.num_kv_heads * s.head_dim;
  return {{"self_attn.q_proj", InputSite::kAttentionInput, q, h, bias},
          {"self_attn.k_proj", InputSite::kAttentionInput, kv, h, bias},
          {"self_attn.v_proj", InputSite::kAttentionInput, kv, h, bias},
          {"self_attn.o_proj", InputSite::kAttentionOutput, h, q, bias},
          {"mlp.gate_proj", InputSite::kMlpInput, ffn, h, false},
          {"mlp.up_proj", InputSite::kMlpInput, ffn, h, false},
          {"mlp.down_proj", InputSite::kMlpHidden, h, ffn, false}};
}

std::string GemmaFamily::block_prefix(const ModelShape& s, int64_t block) const {
  return fmt::format("{}layers.{}.", settings_of(s).prefix, block);
}

std::vector<ExpectedTensor> GemmaFamily::block_tensors(const ModelShape& s, int64_t block) const {
  const std::string p = block_prefix(s, block);
  std::vector<ExpectedTensor> out;
  append_linear_tensors(p, linear_layers(s), out);
  // Gemma norms scale by (1 + w), so transformers initialises w to zeros.
  for (const char* norm :
       {"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"})
    out.push_back({p + norm + ".weight", {s.hidden_size}, TensorInit::kZeros});
  if (settings_of(s).qk_norm) {
    out.push_back({p + "self_attn.q_norm.weight", {s.head_dim}, TensorInit::kZeros});
    out.push_back({p + "self_attn.k_norm.weight", {s.head_dim}, TensorInit::kZeros});
  }
  return out;
}

std::vector<ExpectedTensor> GemmaFamily::global_tensors(const ModelShape& s) const {
  std::vector<ExpectedTensor> out;
  const std::string& p = settings_of(s).prefix;
  out.push_back({p + "embed_tokens.weight", {s.vocab_size, s.hidden_size}, TensorInit::kNormal});
  out.push_back({p + "norm.weight", {s.hidden_size}, TensorInit::kZeros});
  if (!s.tie_word_embeddings) out.push_back({settings_of(s).head, {s.vocab_size, s.hidden_size}, TensorInit::kNormal});
  return out;
}

std::unique_ptr<FamilyForward> GemmaFamily::make_forward(const ModelShape& shape, GlobalWeights globals,
                                                         c10::Device device) const {
  return std::make_unique<GemmaForward>(shape, std::move(globals), device);
}

}  // namespace optima::gemma
