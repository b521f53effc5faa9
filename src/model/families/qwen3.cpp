// The Qwen3 family (model_type qwen3): config.json keys, the block's linear layers, tensor names and the forward pass
// as transformers' Qwen3ForCausalLM computes it: LLaMA's block (RMSNorm, SwiGLU MLP, grouped-query attention,
// rotate-half rotary embeddings with default, linear or LLaMA-3 scaling) plus an RMSNorm over head_dim on each query
// and key head before the rotary embedding, q/k/v/o biases only with attention_bias, head_dim from the config
// (128 when absent, Qwen3Config's default) and optional sliding-window layers.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <optional>

#include "arch_helpers.h"
#include "ops.h"
#include "optima/core/error.h"
#include "optima/model/family.h"
#include "rope.h"
#include "sliding_window.h"

namespace optima {
namespace {

struct Qwen3Settings : FamilySettings {
  bool attention_bias = false;
  double norm_eps = 1e-6;
  int64_t default_head_dim = 128;  // Qwen3Config's head_dim when config.json has none
  double rope_theta = 10000.0;
  std::string rope_type = "default";  // "default", "linear" or "llama3"
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0;        // llama3
  double rope_high_freq_factor = 4.0;       // llama3
  int64_t rope_original_max_positions = 0;  // llama3; 0: max_position_embeddings, as transformers defaults it
  int64_t default_sliding_window = 4096;    // Qwen3Config's, used only with use_sliding_window
  int64_t default_max_window_layers = 28;   // Qwen3Config's: layers from this index on slide, unless layer_types
  int64_t sliding_window = 0;               // 0: no sliding layers
  std::vector<bool> sliding_layers;         // per block: attention limited to the last sliding_window tokens
};

const Qwen3Settings& settings_of(const ModelShape& shape) {
  return family_settings<Qwen3Settings>(shape);
}

// --- config.json ---------------------------------------------------------------------------------------------

// Rotary settings in either spelling (rope_parameters, or the older rope_theta + rope_scaling).
void read_rope(const ModelConfig& config, const ModelShape& s, Qwen3Settings& q) {
  const rope::RopeBlock block = rope::rope_block(config);
  q.rope_theta = rope::number(config, block, "rope_theta", q.rope_theta);
  q.rope_type = rope::rope_type(config, block);
  const std::string where_type = rope::where_field(config, block, rope::type_key(block));
  if (q.rope_type != "default" && q.rope_type != "linear" && q.rope_type != "llama3")
    fail_input(where_type, "unsupported rotary scaling for qwen3", "default, linear or llama3", q.rope_type);
  // Qwen3's own default rotary ignores partial_rotary_factor but transformers' scaled ones honour it: refuse
  // rather than pick one.
  const double partial = rope::number(config, block, "partial_rotary_factor", 1.0);
  if (partial != 1.0)
    fail_input(rope::where_field(config, block, "partial_rotary_factor"), "unsupported for qwen3", "1",
               fmt::format("{}", partial));
  if (q.rope_type == "default") return;
  auto required = [&](const char* name) {
    const std::optional<double> value = rope::field(config, block, name);
    if (!value) fail_input(rope::where_field(config, block, name), "required key is missing");
    return *value;
  };
  q.rope_factor = required("factor");
  if (!(q.rope_factor > 0))
    fail_input(rope::where_field(config, block, "factor"), "must be positive", "> 0", fmt::format("{}", q.rope_factor));
  if (q.rope_type != "llama3") return;
  q.rope_low_freq_factor = required("low_freq_factor");
  q.rope_high_freq_factor = required("high_freq_factor");
  // transformers gives a top-level original_max_position_embeddings priority, then the block's, then
  // max_position_embeddings.
  const std::optional<double> in_block = rope::field(config, block, "original_max_position_embeddings");
  const double original = config.has("original_max_position_embeddings")
                              ? config.require<double>("original_max_position_embeddings")
                              : in_block.value_or(static_cast<double>(s.max_positions));
  q.rope_original_max_positions =
      rope::count(rope::where_field(config, block, "original_max_position_embeddings"), original);
}

// Which blocks slide: layer_types when written, else (with use_sliding_window) those from max_window_layers on.
void read_sliding_window(const ModelConfig& config, const ModelShape& s, Qwen3Settings& q) {
  const bool enabled = config.value_or<bool>("use_sliding_window", false);
  q.sliding_layers.assign(static_cast<size_t>(s.num_layers), false);
  if (config.has("layer_types")) {
    const auto& types = config.json()["layer_types"];
    const std::string where = where_key(config, "layer_types");
    if (!types.is_array() || static_cast<int64_t>(types.size()) != s.num_layers)
      fail_input(where, "must list one type per layer", fmt::format("a list of {} strings", s.num_layers),
                 types.dump());
    for (size_t i = 0; i < types.size(); ++i) {
      const std::string type = types[i].is_string() ? types[i].get<std::string>() : types[i].dump();
      if (type != "full_attention" && type != "sliding_attention")
        fail_input(fmt::format("{}[{}]", where, i), "unsupported layer type", "full_attention or sliding_attention",
                   type);
      q.sliding_layers[i] = type == "sliding_attention";
    }
  } else if (enabled) {
    const int64_t first =
        config.has("max_window_layers") ? config.require<int64_t>("max_window_layers") : q.default_max_window_layers;
    for (int64_t i = std::max<int64_t>(first, 0); i < s.num_layers; ++i)
      q.sliding_layers[static_cast<size_t>(i)] = true;
  }
  if (std::find(q.sliding_layers.begin(), q.sliding_layers.end(), true) == q.sliding_layers.end()) return;
  // transformers drops sliding_window unless use_sliding_window: sliding layers without it have no window.
  if (!enabled)
    fail_input(where_key(config, "use_sliding_window"), "layer_types names sliding_attention layers", "true", "false");
  q.sliding_window = positive_or(config, "sliding_window", q.default_sliding_window);
}

// --- forward pass --------------------------------------------------------------------------------------------

at::Tensor rotary_inv_freq(const ModelShape& shape, const Qwen3Settings& q, c10::Device device) {
  at::Tensor inv_freq = rope::default_inv_freq(q.rope_theta, shape.head_dim, device);
  if (q.rope_type == "linear") inv_freq = inv_freq / q.rope_factor;
  if (q.rope_type == "llama3")
    inv_freq = rope::llama3_scaling(inv_freq, q.rope_factor, q.rope_low_freq_factor, q.rope_high_freq_factor,
                                    q.rope_original_max_positions);
  return inv_freq;
}

class Qwen3Forward : public FamilyForward {
 public:
  Qwen3Forward(const ModelShape& shape, GlobalWeights globals, c10::Device device)
      : shape_(shape),
        settings_(settings_of(shape)),
        globals_(std::move(globals)),
        inv_freq_(rotary_inv_freq(shape, settings_, device)) {}

  at::Tensor embed(const at::Tensor& tokens) const override {
    return at::embedding(globals_.at("model.embed_tokens.weight"), tokens);
  }

  at::Tensor block(const BlockWeights& b, const at::Tensor& hidden, const SiteHook& hook) const override {
    const double eps = settings_.norm_eps;
    const at::Tensor h = hidden + attention(b, ops::rms_norm(hidden, b.get("input_layernorm.weight"), eps), hook);
    const at::Tensor x = ops::rms_norm(h, b.get("post_attention_layernorm.weight"), eps);
    if (hook) hook(InputSite::kMlpInput, x);
    const at::Tensor mid =
        at::silu(at::linear(x, b.get("mlp.gate_proj.weight"))) * at::linear(x, b.get("mlp.up_proj.weight"));
    if (hook) hook(InputSite::kMlpHidden, mid);
    return h + at::linear(mid, b.get("mlp.down_proj.weight"));
  }

  at::Tensor logits(const at::Tensor& hidden) const override {
    const at::Tensor h = ops::rms_norm(hidden, globals_.at("model.norm.weight"), settings_.norm_eps);
    return at::linear(h, globals_.at(shape_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"));
  }

 private:
  at::Tensor attention(const BlockWeights& b, const at::Tensor& x, const SiteHook& hook) const {
    if (hook) hook(InputSite::kAttentionInput, x);
    auto project = [&](const std::string& name, int64_t heads) {
      const at::Tensor y =
          ops::linear(x, b.get("self_attn." + name + ".weight"), b.find("self_attn." + name + ".bias"));
      return ops::split_heads(y, heads, shape_.head_dim);
    };
    // The per-head norms act on head_dim, before the rotary embedding (Qwen3Attention).
    at::Tensor q =
        ops::rms_norm(project("q_proj", shape_.num_heads), b.get("self_attn.q_norm.weight"), settings_.norm_eps);
    at::Tensor k =
        ops::rms_norm(project("k_proj", shape_.num_kv_heads), b.get("self_attn.k_norm.weight"), settings_.norm_eps);
    const at::Tensor v = project("v_proj", shape_.num_kv_heads);
    const ops::RotaryTables rotary = ops::rotary_tables(inv_freq_, x.size(1), q.scalar_type());
    q = ops::apply_rotary(q, rotary);
    k = ops::apply_rotary(k, rotary);
    const bool slides = settings_.sliding_layers[static_cast<size_t>(b.index)];
    const at::Tensor out =
        slides ? ops::sliding_window_attention(q, k, v, settings_.sliding_window) : ops::causal_attention(q, k, v);
    if (hook) hook(InputSite::kAttentionOutput, out);
    return ops::linear(out, b.get("self_attn.o_proj.weight"), b.find("self_attn.o_proj.bias"));
  }

  ModelShape shape_;
  Qwen3Settings settings_;
  GlobalWeights globals_;
  at::Tensor inv_freq_;  // rotary inverse frequencies [head_dim / 2], fp32
};

// --- the family ----------------------------------------------------------------------------------------------

class Qwen3Family : public Family {
 public:
  std::string_view name() const override { return "qwen3"; }

  void read_shape(const ModelConfig& config, ModelShape& s) const override {
    auto settings = std::make_shared<Qwen3Settings>();
    s.hidden_size = require_positive(config, "hidden_size");
    s.num_layers = require_positive(config, "num_hidden_layers");
    s.num_heads = require_positive(config, "num_attention_heads");
    s.num_kv_heads = positive_or(config, "num_key_value_heads", s.num_heads);
    s.intermediate_size = require_positive(config, "intermediate_size");
    s.vocab_size = require_positive(config, "vocab_size");
    s.max_positions = require_positive(config, "max_position_embeddings");
    s.head_dim = positive_or(config, "head_dim", settings->default_head_dim);
    s.tie_word_embeddings = config.value_or<bool>("tie_word_embeddings", false);
    settings->norm_eps = config.value_or<double>("rms_norm_eps", settings->norm_eps);
    settings->attention_bias = config.value_or<bool>("attention_bias", false);
    const std::string act = config.value_or<std::string>("hidden_act", "silu");
    if (act != "silu") fail_input(where_key(config, "hidden_act"), "unsupported activation", "silu", act);
    if (s.num_heads % s.num_kv_heads != 0)
      fail_input(where_key(config, "num_key_value_heads"), "must divide num_attention_heads",
                 fmt::format("a divisor of {}", s.num_heads), std::to_string(s.num_kv_heads));
    if (s.head_dim % 2 != 0)
      fail_input(where_key(config, "head_dim"), "must be even (rotary embeddings rotate pairs)", "an even number",
                 std::to_string(s.head_dim));
    read_rope(config, s, *settings);
    read_sliding_window(config, s, *settings);
    s.settings = std::move(settings);
  }

  std::vector<LinearLayer> linear_layers(const ModelShape& s) const override {
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

  std::string block_prefix(const ModelShape& /*shape*/, int64_t block) const override {
    return llama_layout_block_prefix(block);
  }

  std::vector<ExpectedTensor> block_tensors(const ModelShape& s, int64_t block) const override {
    const std::string p = block_prefix(s, block);
    std::vector<ExpectedTensor> out;
    append_linear_tensors(p, linear_layers(s), out);
    out.push_back({p + "self_attn.q_norm.weight", {s.head_dim}, TensorInit::kOnes});
    out.push_back({p + "self_attn.k_norm.weight", {s.head_dim}, TensorInit::kOnes});
    out.push_back({p + "input_layernorm.weight", {s.hidden_size}, TensorInit::kOnes});
    out.push_back({p + "post_attention_layernorm.weight", {s.hidden_size}, TensorInit::kOnes});
    return out;
  }

  std::vector<ExpectedTensor> global_tensors(const ModelShape& s) const override {
    return llama_layout_global_tensors(s);
  }

  std::unique_ptr<FamilyForward> make_forward(const ModelShape& shape, GlobalWeights globals,
                                              c10::Device device) const override {
    return std::make_unique<Qwen3Forward>(shape, std::move(globals), device);
  }
};

}  // namespace

const Family& qwen3_family() {
  static const Qwen3Family family;
  return family;
}

}  // namespace optima
