// Shared forward-pass operations of the families (see ops.h).
#include "ops.h"

#include <ATen/ATen.h>

#include <optional>

#include "small_head_attention_cpu.h"

namespace optima::ops {
namespace {

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight);
}

std::vector<at::Tensor> linears(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                                const std::vector<at::Tensor>& biases) {
  // Stacking copies the weights at every call: worth it while they are a few MiB, nothing next to the product.
  constexpr int64_t kStackedWeightLimit = int64_t{1} << 20;  // elements
  int64_t total = 0, with_bias = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    total += weights[i].numel();
    with_bias += biases[i].defined() ? 1 : 0;
  }
  std::vector<at::Tensor> out;
  const bool same_bias = with_bias == 0 || with_bias == static_cast<int64_t>(weights.size());
  if (weights.size() < 2 || total > kStackedWeightLimit || !same_bias) {
    for (size_t i = 0; i < weights.size(); ++i) out.push_back(linear(x, weights[i], biases[i]));
    return out;
  }
  const at::Tensor y = linear(x, at::cat(weights, 0), with_bias > 0 ? at::cat(biases, 0) : at::Tensor());
  int64_t offset = 0;
  for (const at::Tensor& w : weights) {
    out.push_back(y.narrow(-1, offset, w.size(0)));
    offset += w.size(0);
  }
  return out;
}

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const at::Tensor y = at::layer_norm(x.to(at::kFloat), {x.size(-1)}, weight.to(at::kFloat), bias.to(at::kFloat), 1e-5);
  return y.to(x.scalar_type());
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

at::Tensor split_heads(const at::Tensor& x, int64_t heads, int64_t head_dim) {
  return x.view({x.size(0), x.size(1), heads, head_dim}).transpose(1, 2);
}

RotaryTables rotary_tables(const at::Tensor& inv_freq, int64_t seq, c10::ScalarType dtype) {
  const at::Tensor positions = at::arange(seq, inv_freq.options());
  const at::Tensor freqs = at::outer(positions, inv_freq);
  const at::Tensor emb = at::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor apply_rotary(const at::Tensor& x, const RotaryTables& tables) {
  return x * tables.cos + rotate_half(x) * tables.sin;
}

at::Tensor repeat_kv_heads(const at::Tensor& x, int64_t heads) {
  const int64_t kv_heads = x.size(1);
  return kv_heads == heads ? x : x.repeat_interleave(heads / kv_heads, 1);
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t batch = q.size(0), heads = q.size(1), seq = q.size(2), head_dim = q.size(3);
  // OPT's query scaling by head_dim^-0.5 is the same factor as the default scale here.
  if (small_head_attention_applies(q, k, v))
    return small_head_causal_attention(q, k, v).transpose(1, 2).reshape({batch, seq, heads * head_dim});
  return libtorch_attention(q, k, v, /*allowed=*/at::Tensor());
}

at::Tensor libtorch_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& allowed) {
  const int64_t batch = q.size(0), heads = q.size(1), seq = q.size(2), head_dim = q.size(3);
  const auto in_type = q.scalar_type();
  const bool promote = in_type == at::kHalf || in_type == at::kBFloat16;
  const at::Tensor kk = repeat_kv_heads(k, heads), vv = repeat_kv_heads(v, heads);
  const at::Tensor out = at::scaled_dot_product_attention(
      promote ? q.to(at::kFloat) : q, promote ? kk.to(at::kFloat) : kk, promote ? vv.to(at::kFloat) : vv,
      allowed.defined() ? std::optional<at::Tensor>(allowed) : std::nullopt, /*dropout_p=*/0.0,
      /*is_causal=*/!allowed.defined());
  return out.to(in_type).transpose(1, 2).reshape({batch, seq, heads * head_dim});
}

}  // namespace optima::ops
