// Statistics of one linear-layer input site, accumulated over calibration batches without keeping activations:
// the Hessian H = XᵀX with SparseGPT's scaling and Wanda's per-column squared norms.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace optima {

class InputStatistics {
 public:
  // `hessian` / `column_norms` choose what is accumulated; `dtype` is fp32 (the reference) or fp64.
  InputStatistics(int64_t features, c10::Device device, bool hessian, bool column_norms,
                  c10::ScalarType dtype = c10::ScalarType::Float);

  // x: [batch, seq, features] (or [tokens, features] as one sample). Follows the reference updates exactly:
  //   H <- H * n / (n + b) + (sqrt(2 / (n + b)) x)ᵀ (sqrt(2 / (n + b)) x)   (n counts samples, b the batch's)
  //   s <- s * n / (n + b) + ||x_j||² / (n + b)                              (Wanda, per column j)
  // A batch of several samples is added one sample after the other (b = 1 each), as the reference's calibration
  // loop adds them: the statistics are then the same sums in the same order whatever --batch-size batched the
  // forward pass.
  void add(const at::Tensor& x);

  // Replaces statistics accumulated over one share of the samples by those of all the shares together (a job of
  // many processes, each with its own share): `sum_over_shares` must replace each tensor of the vector by its
  // element-wise sum over the shares (an all-reduce). H and s are running means over samples, so each share is
  // weighted by its sample count: H = sum_r n_r H_r / sum_r n_r, the single-process result up to round-off.
  void pool(const std::function<void(std::vector<at::Tensor>&)>& sum_over_shares);

  int64_t samples() const { return samples_; }
  int64_t tokens() const { return tokens_; }
  const at::Tensor& hessian() const { return hessian_; }
  const at::Tensor& column_sq_norms() const { return column_norms_; }
  // True when an input value was NaN or Inf, or when the statistics overflowed (finite activations beyond about
  // 1e19 square past fp32's range); checked on every batch: a poisoned Hessian is useless.
  bool saw_non_finite() const { return non_finite_; }

 private:
  void add_sample(const at::Tensor& rows);

  at::Tensor hessian_;
  at::Tensor column_norms_;
  int64_t samples_ = 0;
  int64_t tokens_ = 0;
  bool non_finite_ = false;
  c10::ScalarType dtype_;
};

}  // namespace optima
