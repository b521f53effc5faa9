// SparseGPT (Frantar & Alistarh, 2023): choose the mask column block by column block with the inverse-Hessian
// (OBS) scores w^2 / [H^-1]_jj^2 and update the remaining weights to compensate each pruned one, exactly as the
// reference fasterprune does (algorithms.md §5), plus a bounded damping-retry when a Cholesky factorization fails.
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cholesky_inverse.h>
#include <ATen/ops/linalg_cholesky_ex.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <tuple>

#include "optima/core/error.h"
#include "optima/core/finite.h"
#include "optima/select/mask_ops.h"
#include "optima/select/selector.h"

namespace optima {

void check_sparsegpt_settings(const SelectorSettings& settings, const SparsityPattern& target);

namespace {

constexpr std::string_view kWho = "sparsegpt selector";

// The upper Cholesky factor U of H^-1 (H^-1 = U^T U), computed as the reference does: Cholesky of H, the inverse
// from that factor, Cholesky of the inverse. Undefined when either factorization fails.
at::Tensor upper_cholesky_of_inverse(const at::Tensor& hessian) {
  const auto [lower, info] = at::linalg_cholesky_ex(hessian, /*upper=*/false, /*check_errors=*/false);
  if (info.item<int>() != 0) return {};
  const at::Tensor inverse = at::cholesky_inverse(lower, /*upper=*/false);
  const auto [upper, info_inverse] = at::linalg_cholesky_ex(inverse, /*upper=*/true, /*check_errors=*/false);
  // A factor with an infinity or NaN (an overflowing inverse of a barely positive H) is as useless as a failure.
  if (info_inverse.item<int>() != 0 || !all_finite(upper)) return {};
  return upper;
}

class SparseGptSelector final : public MaskSelector {
 public:
  explicit SparseGptSelector(const SelectorSettings& settings) : settings_(settings) {}

  Selection select(const at::Tensor& weight, const LayerStats& stats, const SparsityPattern& target) const override {
    const at::NoGradGuard no_grad;  // weights may be parameters that require grad; selection is never traced
    check_weight(weight, kWho);
    const int64_t rows = weight.size(0);
    const int64_t cols = weight.size(1);
    const SparsityPattern& pattern = target;
    check_sparsegpt_settings(settings_, pattern);
    pattern.check_fits(cols, fmt::format("{}, weight [{}, {}]", kWho, rows, cols));
    if (!stats.hessian.defined())
      fail(ErrorKind::kInternal, kWho, "the Hessian of the layer input was not accumulated");
    if (stats.hessian.dim() != 2 || stats.hessian.size(0) != cols || stats.hessian.size(1) != cols)
      fail_input(kWho, "the Hessian does not match the weight's input size", fmt::format("[{}, {}]", cols, cols),
                 fmt::format("[{}]", fmt::join(stats.hessian.sizes(), ", ")));

    // Private copies: both are modified in place below.
    const at::ScalarType dtype = compute_dtype(weight);
    at::Tensor w = weight.to(dtype).clone(at::MemoryFormat::Contiguous);
    at::Tensor h = stats.hessian.to(weight.device(), dtype).clone(at::MemoryFormat::Contiguous);
    check_finite(w, kWho, "the weight");
    check_finite(h, kWho, "the Hessian");
    at::Tensor diag = h.diagonal();  // a view: writing it writes H's diagonal
    if ((diag < 0).any().item<bool>())
      fail(ErrorKind::kNumeric, kWho, "the Hessian has negative diagonal entries, so it is not a sum of x x^T");

    // Dead inputs (never non-zero in calibration) carry no information: their weights go, and a unit diagonal keeps
    // H invertible.
    const at::Tensor dead = diag == 0;
    diag.masked_fill_(dead, 1);
    w.masked_fill_(dead.unsqueeze(0), 0);

    // The damping stays a tensor of the compute dtype, as in the reference (percdamp * torch.mean(torch.diag(H))).
    const at::Tensor undamped = diag.clone();
    const at::Tensor mean_diag = undamped.mean();
    at::Tensor damp = mean_diag * settings_.percdamp;
    Selection result;
    at::Tensor u;
    for (;; ++result.damping_retries) {
      diag.copy_(undamped + damp);
      u = upper_cholesky_of_inverse(h);
      if (u.defined()) break;
      if (result.damping_retries == kMaxDampingRetries)
        fail(ErrorKind::kNumeric, kWho,
             fmt::format("the Cholesky factorization of the damped Hessian [{}, {}] failed even after raising the "
                         "damping {} times to {:.6g} ({:.6g} x mean(diag H) = {:.6g}); the layer's input statistics "
                         "are far from positive definite",
                         cols, cols, kMaxDampingRetries, damp.item<double>(),
                         damp.item<double>() / mean_diag.item<double>(), mean_diag.item<double>()));
      // Ten times more each time; with percdamp 0 the first retry starts at 1e-6 of the mean diagonal.
      const bool undamped_start = settings_.percdamp == 0 && result.damping_retries == 0;
      damp = undamped_start ? mean_diag * 1e-6 : damp * 10;
    }
    result.damping = damp.item<double>();

    result.pruned = at::zeros({rows, cols}, w.options().dtype(at::kBool));
    const int64_t blocksize = settings_.blocksize;
    for (int64_t a = 0; a < cols; a += blocksize) {
      const int64_t b = std::min(a + blocksize, cols);
      const int64_t count = b - a;
      at::Tensor w1 = w.narrow(1, a, count).clone();
      at::Tensor q1 = at::zeros_like(w1);
      at::Tensor err1 = at::zeros_like(w1);
      const at::Tensor u1 = u.narrow(0, a, count).narrow(1, a, count);
      const at::Tensor d1 = u1.diagonal();
      const at::Tensor d1_sq = d1.square().unsqueeze(0);

      // Unstructured: one threshold for the whole block (all rows), from the weights as they enter the block.
      at::Tensor mask1 = pattern.is_unstructured() ? global_threshold_mask(w1.square() / d1_sq, pattern.sparsity())
                                                   : at::zeros(w1.sizes(), w1.options().dtype(at::kBool));
      for (int64_t i = 0; i < count; ++i) {
        if (pattern.is_n_m() && i % pattern.m() == 0) {
          // Chosen on the weights as updated by the columns already processed in this block.
          const int64_t m = pattern.m();
          const at::Tensor scores = w1.narrow(1, i, m).square() / d1_sq.narrow(1, i, m);
          const at::Tensor lowest = std::get<1>(at::topk(scores, pattern.n(), /*dim=*/1, /*largest=*/false,
                                                         /*sorted=*/false));
          mask1.narrow(1, i, m).scatter_(1, lowest, true);
        }
        const at::Tensor column = w1.select(1, i);
        const at::Tensor q = column.masked_fill(mask1.select(1, i), 0);
        q1.select(1, i).copy_(q);
        const at::Tensor err = (column - q) / d1[i];
        // OBS update of the block's remaining columns (and of column i itself, which becomes q, as in the reference).
        w1.narrow(1, i, count - i).addr_(err, u1.select(0, i).narrow(0, i, count - i), /*beta=*/1, /*alpha=*/-1);
        err1.select(1, i).copy_(err);
      }
      w.narrow(1, a, count).copy_(q1);
      result.pruned.narrow(1, a, count).copy_(mask1);
      // The lazy batched update: every later column at once.
      if (b < cols)
        w.narrow(1, b, cols - b).addmm_(err1, u.narrow(0, a, count).narrow(1, b, cols - b), /*beta=*/1, /*alpha=*/-1);
    }
    check_finite(w, kWho, "the updated weight");
    result.weight = w;
    return result;
  }

 private:
  SelectorSettings settings_;
};

}  // namespace

std::unique_ptr<MaskSelector> make_sparsegpt_selector(const SelectorSettings& settings) {
  return std::make_unique<SparseGptSelector>(settings);
}

void check_sparsegpt_settings(const SelectorSettings& settings, const SparsityPattern& target) {
  // SparseGPT picks N:M groups relative to each block's start; blocks that split groups would break the pattern.
  if (target.is_n_m() && settings.blocksize % target.m() != 0)
    fail_usage(fmt::format("sparsegpt with the {} pattern needs blocksize to be a multiple of {} (found {})",
                           target.to_string(), target.m(), settings.blocksize));
}

}  // namespace optima
