// The iterative OPTIMA row solver: Jacobi-preconditioned conjugate gradients on every row at once, for layers
// whose per-row systems are too large to factor. Each row is its own CG run (own step lengths) on its kept set;
// all rows share one product with H per iteration.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "optima/core/error.h"
#include "optima/solve/row_solver.h"
#include "solve_common.h"

namespace optima {

namespace {

constexpr const char* kWhere = "solve_rows_cg";
// The recursive CG residual drifts from the true one; it is recomputed from x this often.
constexpr int64_t kResidualReplacementPeriod = 50;
// fp32 inner solves aim this far below their own right-hand side (fp32 CG stalls not far past it).
constexpr double kInnerReduction = 1e-4;

struct CgState {
  int64_t iterations = 0;
  double flops = 0;
};

// Preconditioned CG for (H x)_T = rhs_T, x_S = 0, every row at once, in h's dtype. Stops when each row's residual
// norm is at most target[r], or when the iteration budget runs out. Rows that reached their target stop moving.
at::Tensor pcg(const at::Tensor& h, const at::Tensor& rhs, at::Tensor x, const at::Tensor& kept, const at::Tensor& dinv,
               const at::Tensor& target, int64_t budget, CgState& state) {
  const double product_flops = 2.0 * static_cast<double>(h.size(0)) * h.size(0) * rhs.size(0);
  auto residual = [&](const at::Tensor& v) {
    state.flops += product_flops;
    return rhs - at::matmul(v, h) * kept;
  };
  at::Tensor r = residual(x);
  at::Tensor z = r * dinv;
  at::Tensor p = z.clone();
  at::Tensor rz = (r * z).sum(1);
  for (int64_t it = 0; it < budget; ++it) {
    const at::Tensor active = at::linalg_vector_norm(r, 2, {1}) > target;
    if (!active.any().item<bool>()) break;
    const at::Tensor q = at::matmul(p, h) * kept;
    state.flops += product_flops;
    ++state.iterations;
    const at::Tensor pq = (p * q).sum(1);
    const at::Tensor alpha = at::where(active & (pq > 0), rz / pq, at::zeros_like(pq)).unsqueeze(1);
    x = x + alpha * p;
    if ((it + 1) % kResidualReplacementPeriod == 0) {
      r = residual(x);
    } else {
      r = r - alpha * q;
    }
    z = r * dinv;
    const at::Tensor rz_next = (r * z).sum(1);
    const at::Tensor beta = at::where(active & (rz > 0), rz_next / rz, at::zeros_like(rz)).unsqueeze(1);
    p = z + beta * p;
    rz = rz_next;
  }
  return x;
}

}  // namespace

RowSolveResult solve_rows_cg(const at::Tensor& dense_weight, const at::Tensor& pruned, const at::Tensor& hessian,
                             const at::Tensor& start, double tolerance, int64_t max_iterations,
                             const RowSolveOptions& options) {
  solve_detail::validate_inputs(kWhere, dense_weight, pruned, hessian, start);
  if (!start.defined()) fail_input(kWhere, "a start point must be given", "[out, in] weights", "none");
  if (!(tolerance > 0)) fail_usage(fmt::format("{}: tolerance must be > 0, found {}", kWhere, tolerance));
  if (max_iterations < 0) fail_usage(fmt::format("{}: max_iterations must be >= 0, found {}", kWhere, max_iterations));
  if (!(options.damp >= 0)) fail_usage(fmt::format("{}: damping must be >= 0, found {}", kWhere, options.damp));
  solve_detail::require_finite(kWhere, "weight", dense_weight);
  solve_detail::require_finite(kWhere, "start", start);
  const solve_detail::PreparedHessian prepared = solve_detail::prepare_hessian(kWhere, hessian);

  RowSolveResult result;
  result.dead_inputs = prepared.dead_inputs;
  result.mean_diag = prepared.mean_diag;
  result.damping = options.damp * prepared.mean_diag;
  const at::Tensor h = prepared.h.clone();
  h.diagonal().add_(result.damping);
  const at::Tensor w = dense_weight.to(at::kDouble);
  const at::Tensor kept = pruned.logical_not().to(at::kDouble);
  const double product_flops = 2.0 * static_cast<double>(h.size(0)) * h.size(0) * w.size(0);

  // Optimality: (H ŵ)_T = (H w)_T with ŵ_S = 0. The Jacobi preconditioner is diag(H)_T (positive: dead inputs
  // have a unit diagonal, and a PSD matrix has no negative one).
  const at::Tensor rhs = at::matmul(w, h) * kept;
  const at::Tensor hw_t_norm = at::linalg_vector_norm(rhs, 2, {1});
  const at::Tensor diag = h.diagonal();
  if (!(diag.min().item<double>() > 0))
    fail(ErrorKind::kNumeric, kWhere, "the Hessian has a non-positive diagonal entry: it is not positive definite",
         "diag(H) > 0", fmt::format("min {:.3g}", diag.min().item<double>()));
  const at::Tensor dinv = (1.0 / diag).unsqueeze(0) * kept;
  const at::Tensor target = hw_t_norm * tolerance;
  at::Tensor x = start.to(at::kDouble) * kept;

  CgState state;
  state.flops = product_flops;
  auto true_residual = [&](const at::Tensor& v) {
    state.flops += product_flops;
    return rhs - at::matmul(v, h) * kept;
  };
  if (options.precision == SolvePrecision::kFloat64) {
    x = pcg(h, rhs, x, kept, dinv, target, max_iterations, state);
  } else {
    // Defect correction: fp32 CG on H e = r with r the fp64 residual, x += e, until the fp64 residual is small.
    const at::Tensor h32 = h.to(at::kFloat), kept32 = kept.to(at::kFloat), dinv32 = dinv.to(at::kFloat);
    for (int round = 0; round <= options.max_refinement_steps && state.iterations < max_iterations; ++round) {
      const at::Tensor r = true_residual(x);
      const at::Tensor rnorm = at::linalg_vector_norm(r, 2, {1});
      if (!(rnorm > target).any().item<bool>()) break;
      result.refinement_steps = round + 1;
      const at::Tensor r32 = r.to(at::kFloat);
      const at::Tensor inner_target = at::maximum(target, rnorm * kInnerReduction).to(at::kFloat);
      const at::Tensor e =
          pcg(h32, r32, at::zeros_like(r32), kept32, dinv32, inner_target, max_iterations - state.iterations, state);
      x = x + e.to(at::kDouble) * kept;
    }
  }
  const at::Tensor rel = solve_detail::relative_residual(true_residual(x), hw_t_norm);
  result.kkt_residual = rel.max().item<double>();
  result.converged = result.kkt_residual <= tolerance;
  result.iterations = state.iterations;
  result.flops = state.flops;
  result.weight = x.masked_fill(pruned, 0.0).to(dense_weight.scalar_type());
  return result;
}

}  // namespace optima
