// The Phi-3 family (model_type phi3): config.json keys, the block's linear layers, tensor names and the forward pass
// as transformers' Phi3ForCausalLM computes it: RMSNorm, a fused qkv_proj and a fused gate_up_proj (each one linear
// layer with one input site, pruned as the one matrix it is), no biases, grouped-query attention with an optional
// sliding window, and rotary embeddings on the first partial_rotary_factor of each head with default or LongRoPE
// frequencies. LongRoPE (legacy names "su" and "yarn", which Phi3Config maps to it) scales the frequencies by
// short_factor, or by long_factor when the sequence is longer than original_max_position_embeddings, and the cos/sin
// tables by an attention factor, as transformers 5.23 does.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>

#include "arch_helpers.h"
#include "ops.h"
#include "optima/core/error.h"
#include "optima/model/family.h"
#include "rope.h"
#include "sliding_window.h"

namespace optima {
namespace {

struct Phi3Settings : FamilySettings {
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  double partial_rotary_factor = 1.0;
  int64_t rotary_dim = 0;                 // int(head_dim * partial_rotary_factor), as transformers truncates
  bool longrope = false;                  // else the default rotary
  std::vector<double> short_factor;       // longrope: for sequences up to original_max_position_embeddings
  std::vector<double> long_factor;        // longrope: for longer ones
  int64_t original_max_positions = 4096;  // Phi3Config's default original_max_position_embeddings
  double attention_factor = 1.0;          // longrope: multiplies cos and sin
  int64_t sliding_window = 0;             // 0: none
};

const Phi3Settings& settings_of(const ModelShape& shape) {
  return family_settings<Phi3Settings>(shape);
}

// --- config.json ---------------------------------------------------------------------------------------------

// LongRoPE's settings (transformers' _compute_longrope_parameters after Phi3Config's standardisation).
void read_longrope(const ModelConfig& config, const ModelShape& s, const rope::RopeBlock& block, Phi3Settings& p) {
  p.longrope = true;
  p.short_factor = rope::factors(config, block, "short_factor", p.rotary_dim / 2);
  p.long_factor = rope::factors(config, block, "long_factor", p.rotary_dim / 2);
  // Phi3Config always has a top-level original_max_position_embeddings (default 4096), and transformers copies it
  // over the rotary block's.
  const double original =
      config.value_or<double>("original_max_position_embeddings", static_cast<double>(p.original_max_positions));
  p.original_max_positions = rope::count(where_key(config, "original_max_position_embeddings"), original);
  // Without an explicit factor, the ratio of the context lengths gives the default attention factor.
  const double factor =
      rope::field(config, block, "factor")
          .value_or(static_cast<double>(s.max_positions) / static_cast<double>(p.original_max_positions));
  const std::optional<double> attention = rope::field(config, block, "attention_factor");
  if (attention) {
    p.attention_factor = *attention;
  } else {
    p.attention_factor =
        factor <= 1.0 ? 1.0 : std::sqrt(1 + std::log(factor) / std::log(static_cast<double>(p.original_max_positions)));
  }
  if (!(p.attention_factor > 0) || !std::isfinite(p.attention_factor))
    fail_input(rope::where_field(config, block, "attention_factor"), "must be a positive number", "> 0",
               fmt::format("{}", p.attention_factor));
}

void read_rope(const ModelConfig& config, const ModelShape& s, Phi3Settings& p) {
  const rope::RopeBlock block = rope::rope_block(config);
  p.rope_theta = rope::number(config, block, "rope_theta", p.rope_theta);
  p.partial_rotary_factor = rope::number(config, block, "partial_rotary_factor", p.partial_rotary_factor);
  const std::string where_partial = rope::where_field(config, block, "partial_rotary_factor");
  if (!(p.partial_rotary_factor > 0 && p.partial_rotary_factor <= 1))
    fail_input(where_partial, "must be in (0, 1]", "a number in (0, 1]", fmt::format("{}", p.partial_rotary_factor));
  p.rotary_dim = static_cast<int64_t>(static_cast<double>(s.head_dim) * p.partial_rotary_factor);
  if (p.rotary_dim < 2 || p.rotary_dim % 2 != 0)
    fail_input(where_partial, "must leave an even number of rotary dimensions",
               fmt::format("an even int(head_dim {} x factor)", s.head_dim), std::to_string(p.rotary_dim));
  const std::string type = rope::rope_type(config, block);
  if (type == "longrope" || type == "su" || type == "yarn") {
    read_longrope(config, s, block, p);
    return;
  }
  if (type != "default")
    fail_input(rope::where_field(config, block, rope::type_key(block)), "unsupported rotary scaling for phi3",
               "default or longrope (legacy: su, yarn)", type);
}

// --- forward pass --------------------------------------------------------------------------------------------

class Phi3Forward : public FamilyForward {
 public:
  Phi3Forward(const ModelShape& shape, GlobalWeights globals, c10::Device device)
      : shape_(shape), settings_(settings_of(shape)), globals_(std::move(globals)) {
    const Phi3Settings& p = settings_;
    if (p.longrope) {
      short_inv_freq_ = rope::longrope_inv_freq(p.rope_theta, p.rotary_dim, p.short_factor, device);
      long_inv_freq_ = rope::longrope_inv_freq(p.rope_theta, p.rotary_dim, p.long_factor, device);
    } else {
      short_inv_freq_ = rope::default_inv_freq(p.rope_theta, p.rotary_dim, device);
      long_inv_freq_ = short_inv_freq_;
    }
  }

  at::Tensor embed(const at::Tensor& tokens) const override {
    return at::embedding(globals_.at("model.embed_tokens.weight"), tokens);
  }

  at::Tensor block(const BlockWeights& b, const at::Tensor& hidden, const SiteHook& hook) const override {
    const double eps = settings_.norm_eps;
    const at::Tensor h = hidden + attention(b, ops::rms_norm(hidden, b.get("input_layernorm.weight"), eps), hook);
    const at::Tensor x = ops::rms_norm(h, b.get("post_attention_layernorm.weight"), eps);
    if (hook) hook(InputSite::kMlpInput, x);
    // gate_up_proj's output is [gate | up], split in halves (Phi3MLP: up * silu(gate)).
    const std::vector<at::Tensor> gate_up = at::linear(x, b.get("mlp.gate_up_proj.weight")).chunk(2, -1);
    const at::Tensor mid = gate_up[1] * at::silu(gate_up[0]);
    if (hook) hook(InputSite::kMlpHidden, mid);
    return h + at::linear(mid, b.get("mlp.down_proj.weight"));
  }

  at::Tensor logits(const at::Tensor& hidden) const override {
    const at::Tensor h = ops::rms_norm(hidden, globals_.at("model.norm.weight"), settings_.norm_eps);
    return at::linear(h, globals_.at(shape_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"));
  }

 private:
  // The frequencies for a sequence of `seq` positions 0..seq-1: transformers picks the long factors when the
  // largest position + 1 exceeds original_max_position_embeddings, for every position of the sequence.
  const at::Tensor& inv_freq(int64_t seq) const {
    return seq > settings_.original_max_positions ? long_inv_freq_ : short_inv_freq_;
  }

  at::Tensor attention(const BlockWeights& b, const at::Tensor& x, const SiteHook& hook) const {
    if (hook) hook(InputSite::kAttentionInput, x);
    const int64_t q_width = shape_.num_heads * shape_.head_dim, kv_width = shape_.num_kv_heads * shape_.head_dim;
    const at::Tensor qkv = at::linear(x, b.get("self_attn.qkv_proj.weight"));
    at::Tensor q = ops::split_heads(qkv.slice(-1, 0, q_width), shape_.num_heads, shape_.head_dim);
    at::Tensor k = ops::split_heads(qkv.slice(-1, q_width, q_width + kv_width), shape_.num_kv_heads, shape_.head_dim);
    const at::Tensor v = ops::split_heads(qkv.slice(-1, q_width + kv_width), shape_.num_kv_heads, shape_.head_dim);
    const int64_t seq = x.size(1);
    const ops::RotaryTables rotary =
        rope::scaled_tables(inv_freq(seq), seq, settings_.attention_factor, q.scalar_type());
    q = rope::apply_partial_rotary(q, rotary);
    k = rope::apply_partial_rotary(k, rotary);
    const at::Tensor out = settings_.sliding_window > 0
                               ? ops::sliding_window_attention(q, k, v, settings_.sliding_window)
                               : ops::causal_attention(q, k, v);
    if (hook) hook(InputSite::kAttentionOutput, out);
    return at::linear(out, b.get("self_attn.o_proj.weight"));
  }

  ModelShape shape_;
  Phi3Settings settings_;
  GlobalWeights globals_;
  at::Tensor short_inv_freq_, long_inv_freq_;  // [rotary_dim / 2], fp32; the same tensor without LongRoPE
};

// --- the family ----------------------------------------------------------------------------------------------

class Phi3Family : public Family {
 public:
  std::string_view name() const override { return "phi3"; }

  void read_shape(const ModelConfig& config, ModelShape& s) const override {
    auto settings = std::make_shared<Phi3Settings>();
    s.hidden_size = require_positive(config, "hidden_size");
    s.num_layers = require_positive(config, "num_hidden_layers");
    s.num_heads = require_positive(config, "num_attention_heads");
    s.num_kv_heads = positive_or(config, "num_key_value_heads", s.num_heads);
    s.intermediate_size = require_positive(config, "intermediate_size");
    s.vocab_size = require_positive(config, "vocab_size");
    s.max_positions = require_positive(config, "max_position_embeddings");
    s.tie_word_embeddings = config.value_or<bool>("tie_word_embeddings", false);
    settings->norm_eps = config.value_or<double>("rms_norm_eps", settings->norm_eps);
    const std::string act = config.value_or<std::string>("hidden_act", "silu");
    if (act != "silu") fail_input(where_key(config, "hidden_act"), "unsupported activation", "silu", act);
    if (s.num_heads % s.num_kv_heads != 0)
      fail_input(where_key(config, "num_key_value_heads"), "must divide num_attention_heads",
                 fmt::format("a divisor of {}", s.num_heads), std::to_string(s.num_kv_heads));
    if (config.has("head_dim")) {
      s.head_dim = require_positive(config, "head_dim");
    } else {
      if (s.hidden_size % s.num_heads != 0)
        fail_input(where_key(config, "num_attention_heads"), "must divide hidden_size when head_dim is absent",
                   fmt::format("a divisor of {}", s.hidden_size), std::to_string(s.num_heads));
      s.head_dim = s.hidden_size / s.num_heads;
    }
    if (config.has("sliding_window")) settings->sliding_window = require_positive(config, "sliding_window");
    read_rope(config, s, *settings);
    s.settings = std::move(settings);
  }

  // The fused projections are single linear layers: qkv_proj reads the attention input and gate_up_proj the MLP
  // input, so each is pruned as one matrix with its one input site's Hessian.
  std::vector<LinearLayer> linear_layers(const ModelShape& s) const override {
    const int64_t h = s.hidden_size, ffn = s.intermediate_size;
    const int64_t q = s.num_heads * s.head_dim, kv = s.num_kv_heads * s.head_dim;
    return {{"self_attn.qkv_proj", InputSite::kAttentionInput, q + 2 * kv, h, false},
            {"self_attn.o_proj", InputSite::kAttentionOutput, h, q, false},
            {"mlp.gate_up_proj", InputSite::kMlpInput, 2 * ffn, h, false},
            {"mlp.down_proj", InputSite::kMlpHidden, h, ffn, false}};
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
    return std::make_unique<Phi3Forward>(shape, std::move(globals), device);
  }
};

}  // namespace

const Family& phi3_family() {
  static const Phi3Family family;
  return family;
}

}  // namespace optima
