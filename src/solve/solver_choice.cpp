// Per-layer choice between the exact and the iterative row solver by predicted cost, and the prediction of layers
// that fp32 cannot hold (see include/optima/solve/row_solver.h).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "optima/solve/row_solver.h"

namespace optima {

namespace {

// The exact solver's batched Cholesky (gathers and refinement included) runs at this fraction of the fp32
// matrix-product rate, growing with the system size m: about 0.1 at m = 384 (OPT-125M attention and fc1, 768
// inputs: 143-185 products measured against 78-83 predicted at 0.21), 0.27 at m = 1536 (OPT-125M fc2: 243 against
// 148 at 0.45), bench/solver_cpu.json "real".
double exact_efficiency(double m) {
  return std::min(0.35, 0.105 * std::pow(std::max(m, 1.0) / 384.0, 0.68));
}
// The exact solver's fixed work besides the factorizations, in products: right-hand sides, residuals and a
// refinement step in fp64 (each about two fp32 products).
constexpr double kExactFixedUnits = 6;
// Iterations the preconditioned CG needs to reach the KKT tolerance from SparseGPT's weights, in fp32 with reliable
// updates: 62 on the real q_proj and fc1 Hessians of a random OPT-125M-shaped model on C4, 144-149 on its fc2,
// 20-95 on the benchmark's synthetic ones; over 1000 on its out_proj, which is why a CG that will not pay is given
// up for the exact solver (break_even_iterations). Each is one product with H plus the low-rank preconditioner's
// thin products and about kPassUnitsTimesN / n products' worth of element-wise passes over [rows, n] (0.4 at
// n = 768, 0.1 at 3072: measured 1.5-1.6 and 1.0-1.1 products per iteration there).
constexpr double kPredictedIterations = 70;
constexpr double kPassUnitsTimesN = 300;
// Its fixed work in products: H w, the fp64 residuals of about three correction rounds (two fp32 products each).
constexpr double kIterativeFixedUnits = 8;
// The low-rank preconditioner's rank, as row_solver_iterative.cpp chooses it.
double low_rank_size(double n) {
  return std::clamp(std::floor(n / 24), std::min(n, 32.0), 128.0);
}
// Condition estimates above this send fp32 work to fp64 directly: fp32 refinement contracts by about
// cond · 2⁻²⁴ · c per step, and the estimate is a lower bound on cond. Measured (damping 1e-6) on a random
// OPT-125M-shaped model on C4 text: attention/fc1 inputs 2.4e3 (true cond 4.4e8; fp32 fails there, which the exact
// solver's probe catches), fc2 inputs 2.4e6 (cond 1.6e9; fp32 holds); opt-small 5e4 and 2.6e6; stories260k below
// 30. So the bound only catches layers far past anything fp32 can hold.
constexpr double kFp32ConditionLimit = 1e8;

}  // namespace

bool predict_fp64(double condition_estimate) {
  return !(condition_estimate <= kFp32ConditionLimit);
}

SolverCostPrediction predict_solver_cost(const at::Tensor& pruned) {
  SolverCostPrediction p;
  const int64_t rows = pruned.size(0), n = pruned.size(1);
  if (rows == 0 || n == 0) return p;
  const at::Tensor pruned_count = pruned.sum(1).to(at::kDouble).cpu();
  const at::Tensor m = at::minimum(pruned_count, static_cast<double>(n) - pruned_count);
  const double fn = static_cast<double>(n);
  const double unit = 2.0 * static_cast<double>(rows) * fn * fn;  // flops of one [rows, n] x [n, n] product
  const double* mv = m.contiguous().data_ptr<double>();
  double exact = 0, largest = 0;
  for (int64_t r = 0; r < rows; ++r) {
    exact += mv[r] * mv[r] * mv[r] / 3.0 / exact_efficiency(mv[r]);
    largest = std::max(largest, mv[r]);
  }
  // Rows through G need H⁻¹ (n³ flops at about half the product rate).
  const double inverse_units = 2.0 * fn * fn * fn / unit;
  p.exact_units = exact / unit + kExactFixedUnits + (largest > 0 ? inverse_units : 0.0);
  // Iterative: per iteration one product and 4·rows·n·k preconditioner flops; setup: subspace iteration (three
  // n x n x k products), every row's k x k matrix (2·rows·n·k² flops) and H's Cholesky (n³/3), all in fp64.
  const double k = low_rank_size(fn), fr = static_cast<double>(rows);
  const double setup_units = 2.0 * (6.0 * fn * fn * k + 2.0 * fr * fn * k * k + fn * fn * fn / 3) / unit;
  const double iteration_units = 1.0 + 2.0 * k / fn + kPassUnitsTimesN / fn;
  p.iterative_units = kPredictedIterations * iteration_units + kIterativeFixedUnits + setup_units;
  p.choice = p.iterative_units < p.exact_units ? RowSolverKind::kIterative : RowSolverKind::kExact;
  p.break_even_iterations = static_cast<int64_t>(
      std::max(0.0, std::floor((p.exact_units - kIterativeFixedUnits - setup_units) / iteration_units)));
  return p;
}

RowSolveResult solve_rows_auto(const at::Tensor& dense_weight, const at::Tensor& pruned, const at::Tensor& hessian,
                               const at::Tensor& start, double tolerance, int64_t max_iterations,
                               const RowSolveOptions& options, const SolverCostPrediction& predicted) {
  if (predicted.choice == RowSolverKind::kExact) return solve_rows_exact(dense_weight, pruned, hessian, options);
  RowSolveOptions bounded = options;
  bounded.abandon_iterations = std::max<int64_t>(1, predicted.break_even_iterations);
  RowSolveResult r = solve_rows_iterative(dense_weight, pruned, hessian, start, tolerance, max_iterations, bounded);
  if (!r.abandoned) return r;
  RowSolveResult exact = solve_rows_exact(dense_weight, pruned, hessian, options);
  exact.abandoned_iterations = r.iterations;
  return exact;
}

}  // namespace optima
