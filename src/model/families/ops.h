// Tensor operations that several families' forward passes share, with transformers' numerics: norms in fp32 whatever
// the activation dtype, rotary embeddings in the rotate-half layout, causal attention with an fp32 softmax.
// Internal to the family files.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace optima::ops {

// One linear layer (weight [out, in], optional bias: an undefined tensor when absent) on x [..., in].
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);
// Several linear layers on the same x (q/k/v, gate/up), outputs in the order given. Small layers run as one product
// with their weights stacked (its outputs are views into it): a product with 64-172 outputs runs at a fraction of
// the rate of one with all of them (stories260k's gate/up: 19 ms as two products of 16384 tokens, 11 ms as one).
// Large ones run one by one, so that no stacked copy of their weights is made.
std::vector<at::Tensor> linears(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                                const std::vector<at::Tensor>& biases);

// LayerNorm over the last dimension with eps 1e-5 (OPT), statistics in fp32; returns x's dtype.
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);
// RMSNorm over the last dimension (LLaMA), normalised in fp32, cast back to x's dtype before the weight.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// x [batch, seq, heads * head_dim] -> [batch, heads, seq, head_dim].
at::Tensor split_heads(const at::Tensor& x, int64_t heads, int64_t head_dim);
// Rotary position embedding of positions 0..seq-1 for inverse frequencies inv_freq [head_dim / 2] (fp32): cos and
// sin [seq, head_dim] in `dtype`.
struct RotaryTables {
  at::Tensor cos, sin;
};
RotaryTables rotary_tables(const at::Tensor& inv_freq, int64_t seq, c10::ScalarType dtype);
// Applies rotary tables to x [batch, heads, seq, head_dim] (rotate-half layout).
at::Tensor apply_rotary(const at::Tensor& x, const RotaryTables& tables);
// Grouped-query attention: kv heads [batch, kv_heads, seq, head_dim] repeated so that query head h reads kv head
// h / (heads / kv_heads).
at::Tensor repeat_kv_heads(const at::Tensor& x, int64_t heads);
// Causal softmax(q k^T / sqrt(head_dim)) v over q [batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim];
// k and v may have fewer heads (grouped-query attention, repeated as by repeat_kv_heads). Half and bfloat16 inputs are
// promoted so that the softmax runs in fp32, as transformers' eager attention does.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
// LibTorch's attention as causal_attention computes it where optima's small-head kernel does not apply (key/value
// heads repeated, fp32 softmax for half and bfloat16): causal when `allowed` is undefined, else over the keys that
// the boolean mask `allowed` [seq, seq] marks true.
at::Tensor libtorch_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed);

}  // namespace optima::ops
