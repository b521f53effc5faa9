// Block-by-block forward pass of OPT and LLaMA-family models (see decoder.h).
#include "optima/model/decoder.h"

#include <ATen/ATen.h>

#include <cmath>

#include "optima/core/error.h"
#include "optima/io/tensor.h"

namespace optima {

const at::Tensor& BlockWeights::get(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) fail(ErrorKind::kInternal, fmt::format("block {}", index), "missing weight " + name);
  return it->second;
}

at::Tensor BlockWeights::find(const std::string& name) const {
  auto it = tensors.find(name);
  return it == tensors.end() ? at::Tensor() : it->second;
}

namespace {

// LLaMA-3 rotary frequency rescaling, as transformers' _compute_llama3_parameters.
at::Tensor llama3_scaling(const at::Tensor& inv_freq, const ModelShape& s) {
  const double factor = s.rope_factor, low = s.rope_low_freq_factor, high = s.rope_high_freq_factor;
  const double old_context = static_cast<double>(s.rope_original_max_positions);
  const double low_wavelen = old_context / low, high_wavelen = old_context / high;
  const at::Tensor wavelen = 2 * M_PI / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / factor, inv_freq);
  const at::Tensor smooth = (old_context / wavelen - low) / (high - low);
  const at::Tensor smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
  const at::Tensor medium = at::logical_not(wavelen < high_wavelen).logical_and(at::logical_not(wavelen > low_wavelen));
  return at::where(medium, smoothed, scaled);
}

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  // fp32 statistics whatever the activation dtype.
  const at::Tensor y = at::layer_norm(x.to(at::kFloat), {x.size(-1)}, weight.to(at::kFloat), bias.to(at::kFloat), 1e-5);
  return y.to(x.scalar_type());
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

}  // namespace

DecoderModel::DecoderModel(const Checkpoint& checkpoint, RunOptions options)
    : checkpoint_(checkpoint), shape_(read_model_shape(checkpoint.config())), options_(options) {
  validate_checkpoint(checkpoint_, shape_);
  dtype_ = options_.dtype;
  if (dtype_ == c10::ScalarType::Undefined) {
    const std::string first = block_prefix(shape_, 0) + linear_layers(shape_)[0].name + ".weight";
    dtype_ = to_scalar_type(checkpoint_.find(first)->dtype);
  }
  for (const ExpectedTensor& t : global_tensors(shape_)) globals_.emplace(t.name, load(t.name));
  if (shape_.family == Family::kLlama) {
    const auto f32 = at::TensorOptions().dtype(at::kFloat).device(options_.device);
    inv_freq_ = 1.0 / at::pow(shape_.rope_theta, at::arange(0, shape_.head_dim, 2, f32.dtype(at::kLong)).to(f32) /
                                                     static_cast<double>(shape_.head_dim));
    if (shape_.rope_type == "linear") inv_freq_ = inv_freq_ / shape_.rope_factor;
    if (shape_.rope_type == "llama3") inv_freq_ = llama3_scaling(inv_freq_, shape_);
  }
}

at::Tensor DecoderModel::load(const std::string& name) const {
  const at::Tensor stored = checkpoint_.load(name);
  at::Tensor value = stored.to(options_.device, dtype_);
  if (!options_.allow_non_finite && !at::isfinite(value).all().item<bool>()) {
    const CheckpointTensor* t = checkpoint_.find(name);
    const bool cast_overflowed = stored.scalar_type() != dtype_ && at::isfinite(stored).all().item<bool>();
    throw Error(
        ErrorKind::kNumeric,
        describe(fmt::format("{}: tensor '{}'", checkpoint_.weight_files()[t->file_index].string(), name),
                 cast_overflowed
                     ? fmt::format("holds values too large for {} (Inf after the cast)", c10::toString(dtype_))
                     : "holds NaN or Inf values",
                 "finite values (or pass --allow-non-finite)",
                 fmt::format("{} non-finite of {}", (~at::isfinite(value)).sum().item<int64_t>(), value.numel())));
  }
  return value;
}

BlockWeights DecoderModel::load_block(int64_t index) const {
  if (index < 0 || index >= shape_.num_layers)
    fail(ErrorKind::kInternal, "load_block", "block index out of range", fmt::format("< {}", shape_.num_layers),
         std::to_string(index));
  BlockWeights block;
  block.index = index;
  const std::string prefix = block_prefix(shape_, index);
  for (const ExpectedTensor& t : block_tensors(shape_, index))
    block.tensors.emplace(t.name.substr(prefix.size()), load(t.name));
  return block;
}

at::Tensor DecoderModel::linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight);
}

at::Tensor DecoderModel::embed(const at::Tensor& ids) const {
  const at::Tensor tokens = ids.to(options_.device, at::kLong);
  if (tokens.numel() > 0) {
    const int64_t low = tokens.min().item<int64_t>(), high = tokens.max().item<int64_t>();
    if (low < 0 || high >= shape_.vocab_size)
      fail_input(checkpoint_.dir().string(),
                 "token id outside the model's vocabulary (is the tokenizer or calibration file the model's own?)",
                 fmt::format("ids in [0, {})", shape_.vocab_size), std::to_string(low < 0 ? low : high));
  }
  if (shape_.family == Family::kOpt) {
    const std::string r = "model.decoder.";
    at::Tensor h = at::embedding(globals_.at(r + "embed_tokens.weight"), tokens);
    if (globals_.count(r + "project_in.weight")) h = at::linear(h, globals_.at(r + "project_in.weight"));
    // Learned positions are offset by 2 (a fairseq legacy): position p reads row p + 2.
    const at::Tensor positions = at::arange(2, tokens.size(1) + 2, tokens.options());
    return h + at::embedding(globals_.at(r + "embed_positions.weight"), positions).unsqueeze(0);
  }
  return at::embedding(globals_.at("model.embed_tokens.weight"), tokens);
}

at::Tensor DecoderModel::rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
  return x * cos + rotate_half(x) * sin;
}

at::Tensor DecoderModel::attention(const BlockWeights& b, const at::Tensor& x, const SiteHook& hook) const {
  if (hook) hook("attn_in", x);
  const int64_t batch = x.size(0), seq = x.size(1), hd = shape_.head_dim;
  const at::Tensor q_in = linear(x, b.get("self_attn.q_proj.weight"), b.find("self_attn.q_proj.bias"));
  const at::Tensor k_in = linear(x, b.get("self_attn.k_proj.weight"), b.find("self_attn.k_proj.bias"));
  const at::Tensor v_in = linear(x, b.get("self_attn.v_proj.weight"), b.find("self_attn.v_proj.bias"));
  at::Tensor q = q_in.view({batch, seq, shape_.num_heads, hd}).transpose(1, 2);
  at::Tensor k = k_in.view({batch, seq, shape_.num_kv_heads, hd}).transpose(1, 2);
  at::Tensor v = v_in.view({batch, seq, shape_.num_kv_heads, hd}).transpose(1, 2);
  if (shape_.family == Family::kLlama) {
    const at::Tensor positions = at::arange(seq, inv_freq_.options());
    const at::Tensor freqs = at::outer(positions, inv_freq_);
    const at::Tensor emb = at::cat({freqs, freqs}, -1);
    const at::Tensor cos = emb.cos().to(q.scalar_type()), sin = emb.sin().to(q.scalar_type());
    q = rotary(q, cos, sin);
    k = rotary(k, cos, sin);
    if (shape_.num_kv_heads != shape_.num_heads) {  // grouped-query attention: head h reads kv head h / group
      const int64_t group = shape_.num_heads / shape_.num_kv_heads;
      k = k.repeat_interleave(group, 1);
      v = v.repeat_interleave(group, 1);
    }
  }
  // Causal softmax(q k^T / sqrt(head_dim)) v; OPT's query scaling by head_dim^-0.5 is the same factor.
  // Reduced-precision inputs are promoted so the softmax runs in fp32, as transformers' eager attention does.
  const auto in_type = q.scalar_type();
  const bool promote = in_type == at::kHalf || in_type == at::kBFloat16;
  at::Tensor out = at::scaled_dot_product_attention(promote ? q.to(at::kFloat) : q, promote ? k.to(at::kFloat) : k,
                                                    promote ? v.to(at::kFloat) : v, /*attn_mask=*/{},
                                                    /*dropout_p=*/0.0, /*is_causal=*/true);
  out = out.to(in_type).transpose(1, 2).reshape({batch, seq, shape_.num_heads * hd});
  if (hook) hook("attn_out", out);
  const char* o = shape_.family == Family::kOpt ? "self_attn.out_proj" : "self_attn.o_proj";
  return linear(out, b.get(std::string(o) + ".weight"), b.find(std::string(o) + ".bias"));
}

at::Tensor DecoderModel::block_forward(const BlockWeights& b, const at::Tensor& hidden, const SiteHook& hook) const {
  at::Tensor h = hidden.to(options_.device, dtype_);
  if (shape_.family == Family::kOpt) {
    const bool pre = shape_.layer_norm_before;
    auto norm = [&](const at::Tensor& x, const std::string& name) {
      return layer_norm(x, b.get(name + ".weight"), b.get(name + ".bias"));
    };
    at::Tensor residual = h;
    if (pre) h = norm(h, "self_attn_layer_norm");
    h = residual + attention(b, h, hook);
    if (!pre) h = norm(h, "self_attn_layer_norm");
    residual = h;
    if (pre) h = norm(h, "final_layer_norm");
    if (hook) hook("mlp_in", h);
    at::Tensor mid = at::relu(linear(h, b.get("fc1.weight"), b.find("fc1.bias")));
    if (hook) hook("mlp_hidden", mid);
    h = residual + linear(mid, b.get("fc2.weight"), b.find("fc2.bias"));
    if (!pre) h = norm(h, "final_layer_norm");
    return h;
  }
  at::Tensor residual = h;
  h = residual + attention(b, rms_norm(h, b.get("input_layernorm.weight"), shape_.norm_eps), hook);
  residual = h;
  const at::Tensor x = rms_norm(h, b.get("post_attention_layernorm.weight"), shape_.norm_eps);
  if (hook) hook("mlp_in", x);
  const at::Tensor gate = linear(x, b.get("mlp.gate_proj.weight"), b.find("mlp.gate_proj.bias"));
  const at::Tensor up = linear(x, b.get("mlp.up_proj.weight"), b.find("mlp.up_proj.bias"));
  const at::Tensor mid = at::silu(gate) * up;
  if (hook) hook("mlp_hidden", mid);
  return residual + linear(mid, b.get("mlp.down_proj.weight"), b.find("mlp.down_proj.bias"));
}

at::Tensor DecoderModel::logits(const at::Tensor& hidden) const {
  at::Tensor h = hidden.to(options_.device, dtype_);
  at::Tensor head;
  if (shape_.family == Family::kOpt) {
    const std::string r = "model.decoder.";
    if (shape_.final_layer_norm)
      h = layer_norm(h, globals_.at(r + "final_layer_norm.weight"), globals_.at(r + "final_layer_norm.bias"));
    if (globals_.count(r + "project_out.weight")) h = at::linear(h, globals_.at(r + "project_out.weight"));
    head = shape_.tie_word_embeddings ? globals_.at(r + "embed_tokens.weight") : globals_.at("lm_head.weight");
  } else {
    h = rms_norm(h, globals_.at("model.norm.weight"), shape_.norm_eps);
    head = shape_.tie_word_embeddings ? globals_.at("model.embed_tokens.weight") : globals_.at("lm_head.weight");
  }
  return at::linear(h, head).to(at::kFloat);
}

at::Tensor DecoderModel::forward(const at::Tensor& ids) const {
  at::Tensor h = embed(ids);
  for (int64_t i = 0; i < shape_.num_layers; ++i) h = block_forward(load_block(i), h);
  return logits(h);
}

}  // namespace optima
