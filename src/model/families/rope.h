// Rotary position embeddings beyond LLaMA's plain ones, shared by the family files that need them, with
// transformers' numerics (modeling_rope_utils.py): the rope settings of config.json, inverse frequencies for the
// default, linear, LLaMA-3 and LongRoPE (Phi-3) variants, tables scaled by an attention factor, and rotation of the
// first `rotary_dim` channels of each head only (partial rotary). Internal to the family files.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "ops.h"
#include "optima/io/model_config.h"

namespace optima::rope {

// The rotary block of config.json as transformers reads it: "rope_scaling" when present and non-empty (transformers
// gives it priority), else "rope_parameters"; `key` says which, for messages. An empty object when neither is there.
struct RopeBlock {
  nlohmann::json json = nlohmann::json::object();
  std::string key = "rope_parameters";
};
RopeBlock rope_block(const ModelConfig& config);

// "<file>: key '<block>'.<name>", the <where> of an error about one field of the rotary block.
std::string where_field(const ModelConfig& config, const RopeBlock& block, const std::string& name);
// The field naming the rotary type: "rope_type", else the legacy "type" when that is there.
const char* type_key(const RopeBlock& block);
// The rotary type: "rope_type", else the legacy "type", else "default".
std::string rope_type(const ModelConfig& config, const RopeBlock& block);
// A number of the rotary block; nullopt when absent or null.
std::optional<double> field(const ModelConfig& config, const RopeBlock& block, const char* name);
// A number of the rotary block, else the same key at the top level of config.json (where older configs keep
// rope_theta and partial_rotary_factor), else `fallback`.
double number(const ModelConfig& config, const RopeBlock& block, const char* name, double fallback);
// A count written as a JSON number (transformers writes 8192 or 8192.0 alike), checked to be a positive integer.
int64_t count(const std::string& where, double value);
// A list of positive numbers of length `length` (LongRoPE's short_factor and long_factor).
std::vector<double> factors(const ModelConfig& config, const RopeBlock& block, const char* name, int64_t length);

// 1 / theta^(2i / dim) for i < dim / 2, fp32 on `device`, computed as transformers does.
at::Tensor default_inv_freq(double theta, int64_t dim, c10::Device device);
// LongRoPE: 1 / (ext_i * theta^(2i / dim)), with ext the short or long factors.
at::Tensor longrope_inv_freq(double theta, int64_t dim, const std::vector<double>& ext, c10::Device device);
// LLaMA-3 frequency rescaling (transformers' _compute_llama3_parameters).
at::Tensor llama3_scaling(const at::Tensor& inv_freq, double factor, double low_freq_factor, double high_freq_factor,
                          int64_t original_max_positions);

// cos and sin [seq, 2 * inv_freq.size(0)] of positions 0..seq-1, each multiplied by `attention_scaling` in fp32
// before the cast to `dtype`, as transformers' rotary modules do.
ops::RotaryTables scaled_tables(const at::Tensor& inv_freq, int64_t seq, double attention_scaling,
                                c10::ScalarType dtype);
// Rotates the first tables.cos.size(-1) channels of x [batch, heads, seq, head_dim] (rotate-half layout) and passes
// the rest through unchanged (partial rotary); the whole head when the tables are as wide as it.
at::Tensor apply_partial_rotary(const at::Tensor& x, const ops::RotaryTables& tables);

}  // namespace optima::rope
