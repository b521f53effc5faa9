// Thanos (Ilin & Richtarik, 2025): in column blocks, choose the weights to remove by Wanda's score on the weights
// as updated so far (unstructured: one global budget for the whole matrix, re-chosen at every block; N:M: per row
// and group), and compensate each row optimally with the inverse of the trailing principal submatrix of the damped
// Hessian (algorithms.md §9).
//
// Where the reference re-inverts H_d[a:, a:] with an LU inverse at every block, this computes one factor: with
// H_d = U U^T (U upper, the Cholesky factor of H_d with rows and columns reversed) and V = U^-1, the trailing
// inverse is G_a = V[a:, a:]^T V[a:, a:], so the rows of G_a a block needs are one product of V's rows a..b.
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cholesky_solve.h>
#include <ATen/ops/diag_embed.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/linalg_cholesky_ex.h>
#include <ATen/ops/linalg_solve.h>
#include <ATen/ops/linalg_solve_triangular.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/take.h>
#include <ATen/ops/zeros.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <tuple>

#include "optima/core/error.h"
#include "optima/core/finite.h"
#include "optima/select/lowest_ops.h"
#include "optima/select/mask_ops.h"
#include "optima/select/selector.h"

namespace optima {

void check_thanos_settings(const SelectorSettings& settings, const SparsityPattern& target);

namespace {

constexpr std::string_view kWho = "thanos selector";

// V = U^-1 for H = U U^T with U upper triangular: with J the reversal, J H J = L L^T gives U = J L J, so
// V = J L^-1 J. Undefined when the factorization fails or the inverse overflows.
at::Tensor reversed_inverse_factor(const at::Tensor& hessian) {
  const auto [lower, info] = at::linalg_cholesky_ex(hessian.flip({0, 1}), /*upper=*/false, /*check_errors=*/false);
  if (info.item<int>() != 0) return {};
  const at::Tensor eye = at::eye(hessian.size(0), hessian.options());
  const at::Tensor lower_inverse = at::linalg_solve_triangular(lower, eye, /*upper=*/false);
  if (!all_finite(lower_inverse)) return {};
  return lower_inverse.flip({0, 1});
}

// Solves G[S_i, S_i] lambda_i = w_i[S_i] for every row i of `block` ([rows, count]) with its removal set S_i (the
// true entries of removed's row i), and returns lambda scattered to [rows, count] (zero outside S_i). Rows are
// gathered into systems padded to the largest |S_i| with identity rows and zero right-hand sides, as the reference
// does, so the solves are one batched factorization.
at::Tensor solve_removals(const at::Tensor& g_block, const at::Tensor& block, const at::Tensor& removed) {
  const int64_t rows = block.size(0);
  const int64_t count = block.size(1);
  at::Tensor lambda = at::zeros({rows, count}, block.options());
  for (int64_t r0 = 0; r0 < rows; r0 += kThanosSolveRows) {
    const int64_t chunk = std::min(kThanosSolveRows, rows - r0);
    const at::Tensor chunk_removed = removed.narrow(0, r0, chunk);
    const at::Tensor sizes = chunk_removed.sum(1);
    const int64_t widest = sizes.max().item<int64_t>();
    if (widest == 0) continue;
    // Each row's removed columns first, in ascending order (a stable sort of the "kept" flag).
    const at::Tensor order =
        std::get<1>(at::sort(chunk_removed.logical_not().to(at::kByte), /*stable=*/true, /*dim=*/1, false));
    const at::Tensor index = order.narrow(1, 0, widest);
    const at::Tensor valid = at::arange(widest, sizes.options()).unsqueeze(0) < sizes.unsqueeze(1);  // [chunk, widest]
    const at::Tensor pairs = valid.unsqueeze(2) & valid.unsqueeze(1);
    at::Tensor systems = at::take(g_block, index.unsqueeze(2) * count + index.unsqueeze(1));
    systems = systems.masked_fill(pairs.logical_not(), 0) + at::diag_embed(valid.logical_not().to(block.dtype()));
    const at::Tensor rhs = block.narrow(0, r0, chunk).gather(1, index).masked_fill(valid.logical_not(), 0);
    // Principal submatrices of the SPD G are SPD: Cholesky, with LU as the fallback when rounding says otherwise.
    const auto [factor, info] = at::linalg_cholesky_ex(systems, /*upper=*/false, /*check_errors=*/false);
    const at::Tensor solution = (info != 0).any().item<bool>()
                                    ? at::linalg_solve(systems, rhs.unsqueeze(2))
                                    : at::cholesky_solve(rhs.unsqueeze(2), factor, /*upper=*/false);
    // Padding positions solve to exactly 0 and name columns outside S_i, so scattering them writes zeros.
    lambda.narrow(0, r0, chunk).scatter_(1, index, solution.squeeze(2));
  }
  return lambda;
}

class ThanosSelector final : public MaskSelector {
 public:
  explicit ThanosSelector(const SelectorSettings& settings) : settings_(settings) {}

  Selection select(const at::Tensor& weight, const LayerStats& stats, const SparsityPattern& target) const override {
    const at::NoGradGuard no_grad;  // weights may be parameters that require grad; selection is never traced
    check_weight(weight, kWho);
    const int64_t rows = weight.size(0);
    const int64_t cols = weight.size(1);
    check_thanos_settings(settings_, target);
    target.check_fits(cols, fmt::format("{}, weight [{}, {}]", kWho, rows, cols));
    check_hessian(stats, cols);

    const at::ScalarType dtype = compute_dtype(weight);
    at::Tensor w = weight.to(dtype).clone(at::MemoryFormat::Contiguous);
    at::Tensor h = stats.hessian.to(weight.device(), dtype).clone(at::MemoryFormat::Contiguous);
    check_finite(w, kWho, "the weight");
    check_finite(h, kWho, "the Hessian");
    at::Tensor diag = h.diagonal();  // a view: writing it writes H's diagonal
    if ((diag < 0).any().item<bool>())
      fail(ErrorKind::kNumeric, kWho, "the Hessian has negative diagonal entries, so it is not a sum of x x^T");
    // Wanda's statistic per column: diag(H) = 2 stat exactly in exact arithmetic, and only the order of the scores
    // matters, so sqrt(diag H) of the undamped H ranks weights as sqrt(stat) does (algorithms.md §9).
    const at::Tensor column_scale = at::sqrt(diag.clone());

    // Dead inputs: their weights go (score 0, so unstructured selection takes them first), a unit diagonal keeps H
    // invertible.
    const at::Tensor dead = diag == 0;
    diag.masked_fill_(dead, 1);
    w.masked_fill_(dead.unsqueeze(0), 0);

    Selection result;
    const at::Tensor v = damped_inverse_factor(h, result);
    result.pruned = at::zeros({rows, cols}, w.options().dtype(at::kBool));
    // The reference's int(s * R * C): (s * R) * C in double, truncated; then exact integers (its fp32 remainder
    // drifts past 2^24 weights).
    const int64_t budget =
        static_cast<int64_t>(target.sparsity() * static_cast<double>(rows) * static_cast<double>(cols));
    int64_t removed_so_far = 0;
    for (int64_t a = 0; a < cols; a += settings_.blocksize) {
      const int64_t count = std::min(settings_.blocksize, cols - a);
      const int64_t width = cols - a;
      at::Tensor trailing = w.narrow(1, a, width);  // a view: updated in place
      at::Tensor removed;
      if (target.is_unstructured()) {
        // One selection over the whole trailing matrix; what falls right of the block is chosen again later.
        const at::Tensor scores = trailing.abs() * column_scale.narrow(0, a, width).unsqueeze(0);
        removed = lowest_k_mask(scores, budget - removed_so_far).narrow(1, 0, count).contiguous();
        removed_so_far += removed.sum().item<int64_t>();
      } else {
        const at::Tensor scores = trailing.narrow(1, 0, count).abs() * column_scale.narrow(0, a, count).unsqueeze(0);
        removed = lowest_n_of_m_mask(scores, target.n(), target.m());
      }
      // Rows a..b of G_a: V[a:b, a:a+count]^T V[a:b, a:] (V upper, so only those rows of V[a:, a:] contribute).
      const at::Tensor v_rows = v.narrow(0, a, count).narrow(1, a, width);
      const at::Tensor g_rows = v_rows.narrow(1, 0, count).t().matmul(v_rows);  // [count, width]
      const at::Tensor lambda =
          solve_removals(g_rows.narrow(1, 0, count).contiguous(), trailing.narrow(1, 0, count), removed);
      trailing.sub_(lambda.matmul(g_rows));
      trailing.narrow(1, 0, count).masked_fill_(removed, 0);
      result.pruned.narrow(1, a, count).copy_(removed);
    }
    check_finite(w, kWho, "the updated weight");
    result.weight = w;
    return result;
  }

 private:
  static void check_hessian(const LayerStats& stats, int64_t cols) {
    if (!stats.hessian.defined())
      fail(ErrorKind::kInternal, kWho, "the Hessian of the layer input was not accumulated");
    if (stats.hessian.dim() != 2 || stats.hessian.size(0) != cols || stats.hessian.size(1) != cols)
      fail_input(kWho, "the Hessian does not match the weight's input size", fmt::format("[{}, {}]", cols, cols),
                 fmt::format("[{}]", fmt::join(stats.hessian.sizes(), ", ")));
  }

  // Adds percdamp * mean(diag H) to H's diagonal (in place) and returns V of reversed_inverse_factor; raises the
  // damping tenfold after a failed factorization, as SparseGPT does, and records what was used in `result`.
  at::Tensor damped_inverse_factor(at::Tensor& h, Selection& result) const {
    at::Tensor diag = h.diagonal();
    const at::Tensor undamped = diag.clone();
    const at::Tensor mean_diag = undamped.mean();
    at::Tensor damp = mean_diag * settings_.percdamp;
    for (;; ++result.damping_retries) {
      diag.copy_(undamped + damp);
      at::Tensor v = reversed_inverse_factor(h);
      if (v.defined()) {
        result.damping = damp.item<double>();
        return v;
      }
      if (result.damping_retries == kMaxDampingRetries)
        fail(ErrorKind::kNumeric, kWho,
             fmt::format("the Cholesky factorization of the damped Hessian [{}, {}] failed even after raising the "
                         "damping {} times to {:.6g} (mean(diag H) = {:.6g}); the layer's input statistics are far "
                         "from positive definite",
                         h.size(0), h.size(1), kMaxDampingRetries, damp.item<double>(), mean_diag.item<double>()));
      const bool undamped_start = settings_.percdamp == 0 && result.damping_retries == 0;
      damp = undamped_start ? mean_diag * 1e-6 : damp * 10;
    }
  }

  SelectorSettings settings_;
};

}  // namespace

std::unique_ptr<MaskSelector> make_thanos_selector(const SelectorSettings& settings) {
  return std::make_unique<ThanosSelector>(settings);
}

void check_thanos_settings(const SelectorSettings& settings, const SparsityPattern& target) {
  // Groups are chosen inside column blocks; a block that splits a group would break the pattern.
  if (target.is_n_m() && settings.blocksize % target.m() != 0)
    fail_usage(fmt::format("thanos with the {} pattern needs blocksize to be a multiple of {} (found {})",
                           target.to_string(), target.m(), settings.blocksize));
}

}  // namespace optima
