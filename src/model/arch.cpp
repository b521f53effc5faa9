// Per-family tensor layouts and config parsing (see arch.h). Free of LibTorch, so that optima_base and the config
// fuzzer (tests/fuzz) can use it; validate_checkpoint, which needs a loaded Checkpoint, is in arch_checkpoint.cpp.
#include "optima/model/arch.h"

#include <cmath>
#include <cstdint>
#include <limits>

#include "optima/core/error.h"

namespace optima {
namespace {

std::string where_key(const ModelConfig& config, std::string_view key) {
  return fmt::format("{}: key '{}'", config.path().string(), key);
}

// Sizes above this are rejected: no model comes near, and it keeps the product of any two sizes (a weight's element
// count, heads x head_dim) within int64, which the tensor layouts below and every user of a shape rely on.
constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();

int64_t check_size(const ModelConfig& config, std::string_view key, int64_t value) {
  if (value <= 0) fail_input(where_key(config, key), "must be positive", "> 0", std::to_string(value));
  if (value > kMaxSize)
    fail_input(where_key(config, key), "is implausibly large", fmt::format("at most {}", kMaxSize),
               std::to_string(value));
  return value;
}

int64_t require_positive(const ModelConfig& config, std::string_view key) {
  return check_size(config, key, config.require<int64_t>(key));
}

// A size that may be absent (then `fallback`), but is checked like a required one when present.
int64_t positive_or(const ModelConfig& config, std::string_view key, int64_t fallback) {
  return config.has(key) ? require_positive(config, key) : fallback;
}

void read_opt(const ModelConfig& config, ModelShape& s) {
  s.family = Family::kOpt;
  s.hidden_size = require_positive(config, "hidden_size");
  s.num_layers = require_positive(config, "num_hidden_layers");
  s.num_heads = require_positive(config, "num_attention_heads");
  s.num_kv_heads = s.num_heads;
  s.intermediate_size = require_positive(config, "ffn_dim");
  s.vocab_size = require_positive(config, "vocab_size");
  s.max_positions = require_positive(config, "max_position_embeddings");
  s.word_embed_proj_dim = positive_or(config, "word_embed_proj_dim", s.hidden_size);
  s.layer_norm_before = config.value_or<bool>("do_layer_norm_before", true);
  s.final_layer_norm = s.layer_norm_before && !config.value_or<bool>("_remove_final_layer_norm", false);
  s.linear_bias = config.value_or<bool>("enable_bias", true);
  s.tie_word_embeddings = config.value_or<bool>("tie_word_embeddings", true);
  if (!config.value_or<bool>("layer_norm_elementwise_affine", true))
    fail_input(where_key(config, "layer_norm_elementwise_affine"), "unsupported value", "true", "false");
  const std::string act = config.value_or<std::string>("activation_function", "relu");
  if (act != "relu") fail_input(where_key(config, "activation_function"), "unsupported activation", "relu", act);
  if (s.hidden_size % s.num_heads != 0)
    fail_input(where_key(config, "num_attention_heads"), "must divide hidden_size",
               fmt::format("a divisor of {}", s.hidden_size), std::to_string(s.num_heads));
  s.head_dim = s.hidden_size / s.num_heads;
}

// Rotary settings: transformers >= 5 writes "rope_parameters" {rope_type, rope_theta, ...}; older configs write
// "rope_theta" and "rope_scaling" {type|rope_type, factor, ...}. Both are accepted.
void read_rope(const ModelConfig& config, ModelShape& s) {
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
  s.rope_factor = number("factor", 1.0);
  s.rope_low_freq_factor = number("low_freq_factor", 1.0);
  s.rope_high_freq_factor = number("high_freq_factor", 4.0);
  // A count written as a JSON number; converting an out-of-range double to an integer is undefined, so check first.
  const double original = number("original_max_position_embeddings", 8192);
  if (!(original >= 1 && original <= static_cast<double>(kMaxSize)) || original != std::floor(original))
    fail_input(where + ".original_max_position_embeddings", "must be a positive integer",
               fmt::format("an integer in [1, {}]", kMaxSize), fmt::format("{}", original));
  s.rope_original_max_positions = static_cast<int64_t>(original);
  if (s.rope_factor <= 0) fail_input(where + ".factor", "must be positive", "> 0", std::to_string(s.rope_factor));
}

void read_llama(const ModelConfig& config, ModelShape& s) {
  s.family = Family::kLlama;
  s.hidden_size = require_positive(config, "hidden_size");
  s.num_layers = require_positive(config, "num_hidden_layers");
  s.num_heads = require_positive(config, "num_attention_heads");
  s.num_kv_heads = positive_or(config, "num_key_value_heads", s.num_heads);
  s.intermediate_size = require_positive(config, "intermediate_size");
  s.vocab_size = require_positive(config, "vocab_size");
  s.max_positions = require_positive(config, "max_position_embeddings");
  s.norm_eps = config.value_or<double>("rms_norm_eps", 1e-6);
  s.rope_theta = config.value_or<double>("rope_theta", 10000.0);
  s.tie_word_embeddings = config.value_or<bool>("tie_word_embeddings", false);
  const bool attention_bias = config.value_or<bool>("attention_bias", false);
  s.qkv_bias = s.model_type == "qwen2" || attention_bias;
  s.o_bias = attention_bias;
  s.mlp_bias = config.value_or<bool>("mlp_bias", false);
  read_rope(config, s);
  const std::string act = config.value_or<std::string>("hidden_act", "silu");
  if (act != "silu") fail_input(where_key(config, "hidden_act"), "unsupported activation", "silu", act);
  if (s.num_kv_heads <= 0 || s.num_heads % s.num_kv_heads != 0)
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
}

std::string opt_root() {
  return "model.decoder.";
}

}  // namespace

std::vector<std::string> supported_model_types() {
  return {"opt", "llama", "mistral", "qwen2"};
}

std::string family_name(Family family) {
  return family == Family::kOpt ? "opt" : "llama";
}

ModelShape read_model_shape(const ModelConfig& config) {
  ModelShape s;
  s.model_type = config.require<std::string>("model_type");
  if (s.model_type == "opt") {
    read_opt(config, s);
  } else if (s.model_type == "llama" || s.model_type == "mistral" || s.model_type == "qwen2") {
    read_llama(config, s);
  } else {
    fail_input(where_key(config, "model_type"), "unsupported model type", "one of opt, llama, mistral, qwen2",
               s.model_type);
  }
  return s;
}

std::string block_prefix(const ModelShape& shape, int64_t block) {
  return fmt::format("{}layers.{}.", shape.family == Family::kOpt ? opt_root() : std::string("model."), block);
}

std::vector<LinearLayer> linear_layers(const ModelShape& s) {
  const int64_t h = s.hidden_size, ffn = s.intermediate_size;
  if (s.family == Family::kOpt) {
    const bool b = s.linear_bias;
    return {{"self_attn.q_proj", "attn_in", h, h, b},
            {"self_attn.k_proj", "attn_in", h, h, b},
            {"self_attn.v_proj", "attn_in", h, h, b},
            {"self_attn.out_proj", "attn_out", h, h, b},
            {"fc1", "mlp_in", ffn, h, b},
            {"fc2", "mlp_hidden", h, ffn, b}};
  }
  const int64_t q = s.num_heads * s.head_dim, kv = s.num_kv_heads * s.head_dim;
  return {{"self_attn.q_proj", "attn_in", q, h, s.qkv_bias},  {"self_attn.k_proj", "attn_in", kv, h, s.qkv_bias},
          {"self_attn.v_proj", "attn_in", kv, h, s.qkv_bias}, {"self_attn.o_proj", "attn_out", h, q, s.o_bias},
          {"mlp.gate_proj", "mlp_in", ffn, h, s.mlp_bias},    {"mlp.up_proj", "mlp_in", ffn, h, s.mlp_bias},
          {"mlp.down_proj", "mlp_hidden", h, ffn, s.mlp_bias}};
}

std::vector<ExpectedTensor> block_tensors(const ModelShape& s, int64_t block) {
  const std::string p = block_prefix(s, block);
  const int64_t h = s.hidden_size;
  std::vector<ExpectedTensor> out;
  for (const LinearLayer& l : linear_layers(s)) {
    out.push_back({p + l.name + ".weight", {l.out_features, l.in_features}, TensorInit::kNormal});
    if (l.bias) out.push_back({p + l.name + ".bias", {l.out_features}, TensorInit::kZeros});
  }
  if (s.family == Family::kOpt) {
    for (const char* norm : {"self_attn_layer_norm", "final_layer_norm"}) {
      out.push_back({p + norm + ".weight", {h}, TensorInit::kOnes});
      out.push_back({p + norm + ".bias", {h}, TensorInit::kZeros});
    }
  } else {
    out.push_back({p + "input_layernorm.weight", {h}, TensorInit::kOnes});
    out.push_back({p + "post_attention_layernorm.weight", {h}, TensorInit::kOnes});
  }
  return out;
}

std::vector<ExpectedTensor> global_tensors(const ModelShape& s) {
  std::vector<ExpectedTensor> out;
  const int64_t h = s.hidden_size;
  if (s.family == Family::kOpt) {
    const std::string r = opt_root();
    const int64_t e = s.word_embed_proj_dim;
    out.push_back({r + "embed_tokens.weight", {s.vocab_size, e}, TensorInit::kNormal});
    out.push_back({r + "embed_positions.weight", {s.max_positions + 2, h}, TensorInit::kNormal});
    if (e != h) {
      out.push_back({r + "project_in.weight", {h, e}, TensorInit::kNormal});
      out.push_back({r + "project_out.weight", {e, h}, TensorInit::kNormal});
    }
    if (s.final_layer_norm) {
      out.push_back({r + "final_layer_norm.weight", {h}, TensorInit::kOnes});
      out.push_back({r + "final_layer_norm.bias", {h}, TensorInit::kZeros});
    }
    if (!s.tie_word_embeddings) out.push_back({"lm_head.weight", {s.vocab_size, e}, TensorInit::kNormal});
  } else {
    out.push_back({"model.embed_tokens.weight", {s.vocab_size, h}, TensorInit::kNormal});
    out.push_back({"model.norm.weight", {h}, TensorInit::kOnes});
    if (!s.tie_word_embeddings) out.push_back({"lm_head.weight", {s.vocab_size, h}, TensorInit::kNormal});
  }
  return out;
}

std::vector<ExpectedTensor> expected_tensors(const ModelShape& s) {
  std::vector<ExpectedTensor> out = global_tensors(s);
  for (int64_t b = 0; b < s.num_layers; ++b) {
    auto block = block_tensors(s, b);
    out.insert(out.end(), block.begin(), block.end());
  }
  return out;
}

}  // namespace optima
