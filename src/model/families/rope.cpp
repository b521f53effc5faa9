// Rotary settings and tables shared by the family files (see rope.h).
#include "rope.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>

#include "arch_helpers.h"
#include "optima/core/error.h"

namespace optima::rope {

RopeBlock rope_block(const ModelConfig& config) {
  const auto& json = config.json();
  RopeBlock block;
  // transformers' convert_rope_params_to_dict: `rope_scaling or rope_parameters`, so a non-empty rope_scaling wins.
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!json.contains(key) || json[key].is_null()) continue;
    const auto& value = json[key];
    if (!value.is_object()) fail_input(where_key(config, key), "must be an object", "an object", value.dump());
    if (value.empty() && std::string(key) == "rope_scaling") continue;
    block.json = value;
    block.key = key;
    break;
  }
  return block;
}

std::string where_field(const ModelConfig& config, const RopeBlock& block, const std::string& name) {
  return where_key(config, block.key) + "." + name;
}

const char* type_key(const RopeBlock& block) {
  const auto& j = block.json;
  return !j.contains("rope_type") && j.contains("type") && !j["type"].is_null() ? "type" : "rope_type";
}

std::string rope_type(const ModelConfig& config, const RopeBlock& block) {
  const auto& j = block.json;
  const char* name = type_key(block);
  if (!j.contains(name) || j[name].is_null()) return "default";
  if (!j[name].is_string()) fail_input(where_field(config, block, name), "wrong type", "a string", j[name].dump());
  return j[name].get<std::string>();
}

std::optional<double> field(const ModelConfig& config, const RopeBlock& block, const char* name) {
  const auto& j = block.json;
  if (!j.contains(name) || j[name].is_null()) return std::nullopt;
  if (!j[name].is_number()) fail_input(where_field(config, block, name), "wrong type", "a number", j[name].dump());
  return j[name].get<double>();
}

double number(const ModelConfig& config, const RopeBlock& block, const char* name, double fallback) {
  const std::optional<double> value = field(config, block, name);
  return value ? *value : config.value_or<double>(name, fallback);
}

int64_t count(const std::string& where, double value) {
  // Converting an out-of-range double to an integer is undefined, so check the range first.
  if (!(value >= 1 && value <= static_cast<double>(kMaxModelSize)) || value != std::floor(value))
    fail_input(where, "must be a positive integer", fmt::format("an integer in [1, {}]", kMaxModelSize),
               fmt::format("{}", value));
  return static_cast<int64_t>(value);
}

std::vector<double> factors(const ModelConfig& config, const RopeBlock& block, const char* name, int64_t length) {
  const auto& j = block.json;
  const std::string where = where_field(config, block, name);
  if (!j.contains(name) || j[name].is_null()) fail_input(where, "required key is missing");
  const auto& list = j[name];
  if (!list.is_array()) fail_input(where, "wrong type", "a list of numbers", list.dump());
  if (static_cast<int64_t>(list.size()) != length)
    fail_input(where, "wrong length (half the rotary dimensions)", fmt::format("{} numbers", length),
               fmt::format("{} numbers", list.size()));
  std::vector<double> out;
  for (const auto& v : list) {
    if (!v.is_number() || !(v.get<double>() > 0) || !std::isfinite(v.get<double>()))
      fail_input(where, "must hold positive numbers", "positive numbers", v.dump());
    out.push_back(v.get<double>());
  }
  return out;
}

namespace {

// 2i / dim for i < dim / 2, in fp32 as transformers' `torch.arange(0, dim, 2, dtype=torch.int64).float() / dim`.
at::Tensor exponents(int64_t dim, c10::Device device) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  return at::arange(0, dim, 2, f32.dtype(at::kLong)).to(f32) / static_cast<double>(dim);
}

}  // namespace

at::Tensor default_inv_freq(double theta, int64_t dim, c10::Device device) {
  return 1.0 / at::pow(theta, exponents(dim, device));
}

at::Tensor longrope_inv_freq(double theta, int64_t dim, const std::vector<double>& ext, c10::Device device) {
  const at::Tensor ext_factors = at::tensor(ext, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat).to(device);
  return 1.0 / (ext_factors * at::pow(theta, exponents(dim, device)));
}

at::Tensor llama3_scaling(const at::Tensor& inv_freq, double factor, double low_freq_factor, double high_freq_factor,
                          int64_t original_max_positions) {
  const double old_context = static_cast<double>(original_max_positions);
  const double low_wavelen = old_context / low_freq_factor, high_wavelen = old_context / high_freq_factor;
  const at::Tensor wavelen = 2 * M_PI / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / factor, inv_freq);
  const at::Tensor smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
  const at::Tensor smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
  const at::Tensor medium = at::logical_not(wavelen < high_wavelen).logical_and(at::logical_not(wavelen > low_wavelen));
  return at::where(medium, smoothed, scaled);
}

ops::RotaryTables scaled_tables(const at::Tensor& inv_freq, int64_t seq, double attention_scaling,
                                c10::ScalarType dtype) {
  const at::Tensor positions = at::arange(seq, inv_freq.options());
  const at::Tensor freqs = at::outer(positions, inv_freq);
  const at::Tensor emb = at::cat({freqs, freqs}, -1);
  return {(emb.cos() * attention_scaling).to(dtype), (emb.sin() * attention_scaling).to(dtype)};
}

at::Tensor apply_partial_rotary(const at::Tensor& x, const ops::RotaryTables& tables) {
  const int64_t rotary_dim = tables.cos.size(-1);
  if (rotary_dim == x.size(-1)) return ops::apply_rotary(x, tables);
  return at::cat({ops::apply_rotary(x.slice(-1, 0, rotary_dim), tables), x.slice(-1, rotary_dim)}, -1);
}

}  // namespace optima::rope
