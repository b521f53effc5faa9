// The ADMM selector (Boza, 2024): on the column-normalised problem, alternate a ridge-damped least-squares update of
// the weights with a projection onto the sparsity pattern, re-choosing the mask during the first iterations, and
// return the projection (algorithms.md §10). The constants are the reference's (core/defaults.h: kAdmm*).
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/linalg_inv.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/zeros_like.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <limits>

#include "optima/core/error.h"
#include "optima/select/lowest_ops.h"
#include "optima/select/mask_ops.h"
#include "optima/select/selector.h"

namespace optima {
namespace {

constexpr std::string_view kWho = "admm selector";

// int(R*C*x) as the reference computes it: the element count (an exact integer) times x in double, truncated.
int64_t count_at(int64_t numel, double fraction) {
  return static_cast<int64_t>(static_cast<double>(numel) * fraction);
}

// The pruned entries at mask iteration t, from T = |V + U|.
at::Tensor pruned_at(const at::Tensor& magnitude, const SparsityPattern& target, int64_t t) {
  if (target.is_unstructured())  // the reference's global branch: the full target at every iteration (no schedule)
    return lowest_k_mask(magnitude, count_at(magnitude.numel(), target.sparsity()));
  at::Tensor base = lowest_n_of_m_mask(magnitude, target.n(), target.m());
  if (t + 1 >= kAdmmMaskIterations) return base;  // s_t = s: exactly the N:M mask
  // Cubic schedule: the int(R*C*s_t) smallest of the entries the N:M mask would prune; entries tied with the
  // threshold stay.
  const double s = target.sparsity();
  const double progress = static_cast<double>(t + 1) / static_cast<double>(kAdmmMaskIterations);
  const double s_t = s - s * std::pow(1.0 - progress, 3);
  const at::Tensor candidates = magnitude.masked_fill(base.logical_not(), std::numeric_limits<double>::infinity());
  return candidates < kth_smallest(candidates, count_at(magnitude.numel(), s_t) + 1);
}

class AdmmSelector final : public MaskSelector {
 public:
  Selection select(const at::Tensor& weight, const LayerStats& stats, const SparsityPattern& target) const override {
    const at::NoGradGuard no_grad;  // weights may be parameters that require grad; selection is never traced
    check_weight(weight, kWho);
    const int64_t rows = weight.size(0);
    const int64_t cols = weight.size(1);
    target.check_fits(cols, fmt::format("{}, weight [{}, {}]", kWho, rows, cols));
    if (!stats.hessian.defined())
      fail(ErrorKind::kInternal, kWho, "the Hessian of the layer input was not accumulated");
    if (stats.hessian.dim() != 2 || stats.hessian.size(0) != cols || stats.hessian.size(1) != cols)
      fail_input(kWho, "the Hessian does not match the weight's input size", fmt::format("[{}, {}]", cols, cols),
                 fmt::format("[{}]", fmt::join(stats.hessian.sizes(), ", ")));

    const at::ScalarType dtype = compute_dtype(weight);
    const at::Tensor w = weight.to(dtype);
    const at::Tensor h = stats.hessian.to(weight.device(), dtype);
    check_finite(w, kWho, "the weight");
    check_finite(h, kWho, "the Hessian");
    if ((h.diagonal() < 0).any().item<bool>())
      fail(ErrorKind::kNumeric, kWho, "the Hessian has negative diagonal entries, so it is not a sum of x x^T");

    // Normalise: A = D^-1 H D^-1 with d_j = sqrt(H_jj) + eps, so the damping and rho are relative to A's unit
    // diagonal; V0 = W D is the weight in those coordinates.
    const at::Tensor d = at::sqrt(h.diagonal()) + kAdmmEps;
    at::Tensor a = h / (d.unsqueeze(1) * d.unsqueeze(0));
    const at::Tensor damp = a.diagonal().mean() * kAdmmPercdamp;
    a.diagonal().add_(damp);
    const at::Tensor v0 = w * d.unsqueeze(0);
    // Y is built with the damped A, so the damping pulls towards V0 rather than towards 0.
    const at::Tensor y = v0.matmul(a);
    const at::Tensor p = at::linalg_inv(a + kAdmmRho * at::eye(cols, a.options()));

    at::Tensor v = v0.clone();
    at::Tensor u = at::zeros_like(v);
    at::Tensor pruned;
    for (int64_t t = 0; t < kAdmmIterations; ++t) {
      const at::Tensor sum = v + u;
      if (t < kAdmmMaskIterations) pruned = pruned_at(sum.abs(), target, t);
      const at::Tensor z = sum.masked_fill(pruned, 0);
      u.add_(v - z);
      v = (y + kAdmmRho * (z - u)).matmul(p);
    }
    const at::Tensor z = (v + u).masked_fill(pruned, 0);

    Selection result;
    result.pruned = pruned;
    result.weight = z / d.unsqueeze(0);
    result.damping = damp.item<double>();
    check_finite(result.weight, kWho, "the updated weight");
    return result;
  }
};

}  // namespace

std::unique_ptr<MaskSelector> make_admm_selector(const SelectorSettings& /*settings*/) {
  return std::make_unique<AdmmSelector>();
}

}  // namespace optima
