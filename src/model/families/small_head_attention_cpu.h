// Causal attention on the CPU for heads of 8, 16, 24 or 32 dimensions in fp32, the case where LibTorch's fused
// attention is slowest for what it computes: its tiles are matrix products with an inner dimension of head_dim, and
// for head_dim 8 (stories260k) they run at a small fraction of the machine's rate (1.4-1.8 ms per window of 256
// tokens and 8 heads, against 0.6-0.8 ms here). Internal to the family files; ops::causal_attention chooses it.
#pragma once

#include <ATen/core/Tensor.h>

namespace optima::ops {

// Whether small_head_causal_attention() can run q [batch, heads, seq, head_dim] with k and v [batch, kv_heads, seq,
// head_dim], kv_heads dividing heads (grouped-query attention: query head h reads key/value head h / (heads /
// kv_heads)): fp32 CPU tensors of any strides with contiguous rows, head_dim a multiple of 8 up to 32, on a CPU with
// AVX2 and FMA.
bool small_head_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
// softmax(q k^T / sqrt(head_dim) + causal mask) v -> [batch, heads, seq, head_dim], a view of a contiguous [batch,
// seq, heads, head_dim] tensor (merging the heads back is then free). Each query's scores are formed in fp32, their
// maximum subtracted, exponentiated with a polynomial accurate to about 1 ulp, and the weighted sum of values divided
// by their total: the eager formula, summed in another order. Reads the inputs in place: no copies, no repeated
// key/value heads.
at::Tensor small_head_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

}  // namespace optima::ops
