// Sliding-window causal attention (Phi-3's sliding_window, Qwen3's sliding layers), as transformers' masks define
// it: query i sees key j when i - window < j <= i. Internal to the family files.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace optima::ops {

// Like causal_attention (ops.h) over [batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim] (k and v may
// have fewer heads), each query seeing at most the `window` latest keys, itself included; plain causal attention
// when seq <= window.
at::Tensor sliding_window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t window);

}  // namespace optima::ops
