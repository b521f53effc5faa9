// Sliding-window causal attention (see sliding_window.h).
#include "sliding_window.h"

#include <ATen/ATen.h>

#include "ops.h"

namespace optima::ops {

at::Tensor sliding_window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t window) {
  const int64_t batch = q.size(0), heads = q.size(1), seq = q.size(2), head_dim = q.size(3);
  if (seq <= window) return causal_attention(q, k, v);
  const at::Tensor i = at::arange(seq, q.options().dtype(at::kLong)).unsqueeze(1);
  const at::Tensor j = at::arange(seq, q.options().dtype(at::kLong)).unsqueeze(0);
  const at::Tensor allowed = (j <= i).logical_and(j > i - window);  // true: attend
  // The softmax runs in fp32 for half and bfloat16 inputs, as in causal_attention.
  const auto in_type = q.scalar_type();
  const bool promote = in_type == at::kHalf || in_type == at::kBFloat16;
  const at::Tensor out =
      at::scaled_dot_product_attention(promote ? q.to(at::kFloat) : q, promote ? k.to(at::kFloat) : k,
                                       promote ? v.to(at::kFloat) : v, allowed, /*dropout_p=*/0.0, /*is_causal=*/false);
  return out.to(in_type).transpose(1, 2).reshape({batch, seq, heads * head_dim});
}

}  // namespace optima::ops
