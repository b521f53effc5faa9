// Sliding-window causal attention (see sliding_window.h).
#include "sliding_window.h"

#include <ATen/ATen.h>

#include "ops.h"

namespace optima::ops {

at::Tensor sliding_window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t window) {
  const int64_t seq = q.size(2);
  if (seq <= window) return causal_attention(q, k, v);
  const at::Tensor i = at::arange(seq, q.options().dtype(at::kLong)).unsqueeze(1);
  const at::Tensor j = at::arange(seq, q.options().dtype(at::kLong)).unsqueeze(0);
  return libtorch_attention(q, k, v, (j <= i).logical_and(j > i - window));  // true: attend
}

}  // namespace optima::ops
