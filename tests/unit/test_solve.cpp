// Tests of the OPTIMA row solvers against an independent per-row fp64 reference, on fresh random Hessians and
// masks every run. Each test prints its seed on failure; OPTIMA_TEST_SEED=<seed> replays it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <limits>
#include <ostream>
#include <random>
#include <string>

#include "optima/core/defaults.h"
#include "optima/solve/row_solver.h"
#include "solve/gather_systems.h"
#include "solve/masked_cholesky.h"
#include "solve/split_cg.h"
#include "solve/symmetrize.h"
#include "test_util.h"

namespace optima {
namespace {

// Seeds ATen's generator from OPTIMA_TEST_SEED or a fresh random value; the seed shows in every failure.
class SolveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const char* env = std::getenv("OPTIMA_TEST_SEED")) {
      seed_ = std::strtoull(env, nullptr, 10);
    } else {
      seed_ = std::random_device{}();
    }
    at::manual_seed(seed_);
    trace_ = std::make_unique<::testing::ScopedTrace>(__FILE__, __LINE__,
                                                      "seed " + std::to_string(seed_) + " (OPTIMA_TEST_SEED)");
  }
  uint64_t seed_ = 0;
  std::unique_ptr<::testing::ScopedTrace> trace_;
};

const at::TensorOptions kF64 = at::TensorOptions().dtype(at::kDouble);

// SPD H = Q diag(λ) Qᵀ with eigenvalues spread geometrically from 1 down to 1/cond.
at::Tensor spd_with_condition(int64_t n, double cond) {
  const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({n, n}, kF64)));
  const at::Tensor eig = at::pow(cond, -at::linspace(0, 1, n, kF64));
  at::Tensor h = at::matmul(q * eig.unsqueeze(0), q.t());
  return (h + h.t()) / 2;
}

// A Gram matrix XᵀX / tokens like a layer's: correlated inputs with a few outlier features. Rank-deficient when
// tokens < n.
at::Tensor gram_hessian(int64_t n, int64_t tokens) {
  const at::Tensor mix = at::eye(n, kF64) + 0.3 * at::randn({n, n}, kF64) / std::sqrt(static_cast<double>(n));
  at::Tensor scale = at::exp(0.5 * at::randn({n}, kF64));
  scale.narrow(0, 0, std::max<int64_t>(1, n / 32)).mul_(20);  // outlier features
  const at::Tensor x = at::matmul(at::randn({tokens, n}, kF64), mix) * scale;
  return at::matmul(x.t(), x) / static_cast<double>(tokens);
}

// Each row pruned with its own probability; row 0 keeps everything and row 1 prunes everything.
at::Tensor variable_mask(int64_t out, int64_t n) {
  const at::Tensor p = at::rand({out, 1}, kF64);
  at::Tensor mask = at::rand({out, n}, kF64) < p;
  mask[0].fill_(false);
  mask[1].fill_(true);
  return mask;
}

// Magnitude-style: one threshold for the whole matrix.
at::Tensor matrix_threshold_mask(const at::Tensor& w, double sparsity) {
  const at::Tensor a = w.abs().flatten();
  const double threshold = std::get<0>(a.sort()).index({static_cast<int64_t>(a.numel() * sparsity)}).item<double>();
  return w.abs() <= threshold;
}

// N zeros in every group of M consecutive columns: the N smallest |w|.
at::Tensor n_m_mask(const at::Tensor& w, int64_t n_zero, int64_t m) {
  const at::Tensor groups = w.abs().reshape({w.size(0), w.size(1) / m, m});
  const at::Tensor smallest = std::get<1>(groups.topk(n_zero, 2, /*largest=*/false));
  return at::zeros_like(groups, groups.options().dtype(at::kBool)).scatter_(2, smallest, true).reshape(w.sizes());
}

// The damped Hessian as the solver defines it: dead inputs get a unit diagonal, then damp · mean(diag) is added.
at::Tensor damped(const at::Tensor& hessian, double damp) {
  at::Tensor h = hessian.to(at::kDouble).clone();
  const at::Tensor dead = h.diagonal() == 0;
  h.diagonal().masked_fill_(dead, 1.0);
  h.diagonal().add_(damp * h.diagonal().mean().item<double>());
  return h;
}

// The reference: for each row, gather T and S and solve H_TT x = H_TS w_S with a dense fp64 solve.
at::Tensor reference(const at::Tensor& w, const at::Tensor& pruned, const at::Tensor& h) {
  const at::Tensor wd = w.to(at::kDouble);
  at::Tensor out = at::zeros_like(wd);
  for (int64_t r = 0; r < w.size(0); ++r) {
    const at::Tensor t = at::nonzero(pruned[r].logical_not()).flatten();
    const at::Tensor s = at::nonzero(pruned[r]).flatten();
    if (t.numel() == 0) continue;
    if (s.numel() == 0) {
      out[r].copy_(wd[r]);
      continue;
    }
    const at::Tensor htt = h.index_select(0, t).index_select(1, t);
    const at::Tensor hts = h.index_select(0, t).index_select(1, s);
    const at::Tensor x = at::linalg_solve(htt, at::matmul(hts, wd[r].index_select(0, s)));
    out[r].index_put_({t}, wd[r].index_select(0, t) + x);
  }
  return out;
}

double rel_diff(const at::Tensor& a, const at::Tensor& b) {
  const double denom = b.to(at::kDouble).norm().item<double>();
  return (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>() / (denom > 0 ? denom : 1.0);
}

// An iterative answer against the fp64 closed form `exact`: the KKT residual measured here, independently of the
// solver, at most kkt_bound on every row; the update within 1e-6 of the closed form's; pruned entries exactly 0.
void expect_closed_form_answer(const RowSolveResult& r, const at::Tensor& w, const at::Tensor& mask,
                               const at::Tensor& h, const at::Tensor& exact, double kkt_bound) {
  const at::Tensor kept = mask.logical_not();
  const at::Tensor rho = at::matmul(r.weight - w, h) * kept;
  const at::Tensor rel = rho.norm(2, {1}) / (at::matmul(w, h) * kept).norm(2, {1});
  EXPECT_LE(rel.max().item<double>(), kkt_bound);
  // The residual the result reports (for the iterative solver, partly the one its CG tracked, not recomputed) is the
  // answer's own, to round-off: an entry off by 1e-15 of |(H w)_T| moves a residual of 1e-10 by 1e-5 of itself.
  EXPECT_NEAR(r.kkt_residual_undamped, rel.max().item<double>(), 1e-3 * rel.max().item<double>() + 1e-13);
  EXPECT_LE(rel_diff(r.weight - w, exact - w), 1e-6);
  EXPECT_TRUE(r.weight.masked_select(mask).eq(0).all().item<bool>());
}

// Per-row objective (ŵ − w)ᵀ H (ŵ − w).
at::Tensor objective(const at::Tensor& what, const at::Tensor& w, const at::Tensor& h) {
  const at::Tensor d = what.to(at::kDouble) - w.to(at::kDouble);
  return (at::matmul(d, h) * d).sum(1);
}

// The relative damping of the problem a result says its answer solves (0 where it was polished to H's own optimum).
double solved_damp(const RowSolveResult& r) {
  return r.mean_diag > 0 ? r.damping / r.mean_diag : 0.0;
}

// Solves with `options`, checks against the reference on the H the result says it solved, and returns the result.
RowSolveResult expect_matches_reference(const at::Tensor& w, const at::Tensor& pruned, const at::Tensor& hessian,
                                        const RowSolveOptions& options, double tolerance, double kkt_tolerance) {
  const RowSolveResult result = solve_rows_exact(w, pruned, hessian, options);
  const at::Tensor ref = reference(w, pruned, damped(hessian, solved_damp(result)));
  EXPECT_EQ(result.weight.scalar_type(), w.scalar_type());
  EXPECT_EQ(result.weight.sizes(), w.sizes());
  EXPECT_TRUE(result.weight.masked_select(pruned).eq(0).all().item<bool>()) << "pruned entries must be exactly 0";
  const double diff = rel_diff(result.weight, ref);
  EXPECT_LE(diff, tolerance) << "relative difference from the reference";
  EXPECT_LE(result.kkt_residual, kkt_tolerance);
  EXPECT_GT(result.flops, 0);
  return result;
}

TEST_F(SolveTest, MatchesReferenceOnWellConditionedHessian) {
  const int64_t out = 48, n = 80;
  const at::Tensor h = spd_with_condition(n, 1e2);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = variable_mask(out, n);
  RowSolveOptions options;
  options.damp = 0;
  const RowSolveResult r64 = expect_matches_reference(w, mask, h, options, 1e-9, 1e-8);
  EXPECT_GT(r64.rows_via_inverse, 0);
  EXPECT_GT(r64.rows_via_kept, 0);
  EXPECT_EQ(r64.damping_retries, 0);
  EXPECT_EQ(r64.damping, 0);
  options.precision = SolvePrecision::kFloat32Refined;
  const RowSolveResult r32 = expect_matches_reference(w, mask, h, options, 1e-5, 1e-8);
  EXPECT_EQ(r32.fp64_fallback_rows, 0) << "a cond-100 Hessian must not need fp64";
}

TEST_F(SolveTest, MatchesReferenceOnBadlyConditionedHessian) {
  const int64_t out = 40, n = 72;
  const at::Tensor h = spd_with_condition(n, 1e8);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = variable_mask(out, n);
  RowSolveOptions options;
  options.damp = 0;
  expect_matches_reference(w, mask, h, options, 1e-9, 1e-8);
  options.precision = SolvePrecision::kFloat32Refined;
  // fp32 cannot factor cond-1e8 systems reliably: refinement or the fp64 fallback must still deliver.
  expect_matches_reference(w, mask, h, options, 1e-5, 1e-8);
}

TEST_F(SolveTest, MatchesReferenceOnRankDeficientGramWithDamping) {
  const int64_t out = 32, n = 96;
  const at::Tensor h = gram_hessian(n, /*tokens=*/40);  // rank 40 < 96: singular without damping
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = variable_mask(out, n);
  RowSolveOptions options;
  options.damp = 1e-2;
  const RowSolveResult r = expect_matches_reference(w, mask, h, options, 1e-9, 1e-8);
  EXPECT_NEAR(r.damping, 1e-2 * h.diagonal().mean().item<double>(), 1e-12 * r.damping);
  options.precision = SolvePrecision::kFloat32Refined;
  expect_matches_reference(w, mask, h, options, 1e-5, 1e-8);
}

struct MaskCase {
  std::string name;
  int kind;  // 0: per-matrix threshold, 1: N:M
  int64_t n_zero, m;
  double sparsity;
};

// How gtest names a case in its output (instead of a byte dump).
void PrintTo(const MaskCase& c, std::ostream* os) {
  *os << c.name;
}

class SolveMaskTest : public SolveTest, public ::testing::WithParamInterface<MaskCase> {};

TEST_P(SolveMaskTest, MatchesReferenceInBothPrecisions) {
  const MaskCase& c = GetParam();
  const int64_t out = 40, n = 64;
  const at::Tensor h = gram_hessian(n, 400);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = c.kind == 0 ? matrix_threshold_mask(w, c.sparsity) : n_m_mask(w, c.n_zero, c.m);
  RowSolveOptions options;
  options.damp = 1e-4;
  options.undamped_tolerance = 1e-12;  // polished to round-off, like the damped solve, for the bounds below
  for (SolvePrecision precision : {SolvePrecision::kFloat64, SolvePrecision::kFloat32Refined}) {
    options.precision = precision;
    const bool fp64 = precision == SolvePrecision::kFloat64;
    const RowSolveResult r = expect_matches_reference(w, mask, h, options, fp64 ? 1e-9 : 1e-5, 1e-8);
    if (c.kind == 1) {
      EXPECT_EQ(r.chunks, 1) << "equal-size rows must share one chunk";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Masks, SolveMaskTest,
                         ::testing::Values(MaskCase{"matrix30", 0, 0, 0, 0.3}, MaskCase{"matrix50", 0, 0, 0, 0.5},
                                           MaskCase{"matrix70", 0, 0, 0, 0.7}, MaskCase{"nm2of4", 1, 2, 4, 0.5},
                                           MaskCase{"nm4of8", 1, 4, 8, 0.5}, MaskCase{"nm1of4", 1, 1, 4, 0.25},
                                           MaskCase{"nm3of4", 1, 3, 4, 0.75}),
                         [](const ::testing::TestParamInfo<MaskCase>& param_info) { return param_info.param.name; });

TEST_F(SolveTest, BothBranchesAgreeWithTheReference) {
  const int64_t out = 24, n = 60;
  const at::Tensor h = spd_with_condition(n, 1e4);
  const at::Tensor w = at::randn({out, n}, kF64);
  RowSolveOptions options;
  options.damp = 0;
  // 25% pruned: every row through G = H⁻¹; 75% pruned: every row through H_TT.
  const at::Tensor few = at::rand({out, n}, kF64).argsort(/*stable=*/false, /*dim=*/1) < n / 4;
  const RowSolveResult via_g = expect_matches_reference(w, few, h, options, 1e-9, 1e-8);
  EXPECT_EQ(via_g.rows_via_inverse, out);
  EXPECT_EQ(via_g.rows_via_kept, 0);
  const at::Tensor many = at::rand({out, n}, kF64).argsort(/*stable=*/false, /*dim=*/1) < 3 * n / 4;
  const RowSolveResult via_h = expect_matches_reference(w, many, h, options, 1e-9, 1e-8);
  EXPECT_EQ(via_h.rows_via_inverse, 0);
  EXPECT_EQ(via_h.rows_via_kept, out);
  // Exactly half pruned: |S| == |T| goes through G.
  const at::Tensor half = at::rand({out, n}, kF64).argsort(/*stable=*/false, /*dim=*/1) < n / 2;
  EXPECT_EQ(solve_rows_exact(w, half, h, options).rows_via_inverse, out);
}

TEST_F(SolveTest, ChunkingGivesTheSameAnswer) {
  const int64_t out = 30, n = 48;
  const at::Tensor h = gram_hessian(n, 200);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = variable_mask(out, n);
  for (SolvePrecision precision : {SolvePrecision::kFloat64, SolvePrecision::kFloat32Refined}) {
    for (const bool polish : {false, true}) {
      RowSolveOptions options;
      options.precision = precision;
      if (!polish) options.undamped_tolerance = 0;
      const RowSolveResult whole = solve_rows_exact(w, mask, h, options);
      options.memory_budget_bytes = 1;  // one row per chunk
      const RowSolveResult tiny = solve_rows_exact(w, mask, h, options);
      const int64_t to_solve = at::logical_and(mask.any(1), mask.logical_not().any(1)).sum().item<int64_t>();
      EXPECT_EQ(tiny.chunks, to_solve) << "every row with something to solve in its own chunk";
      EXPECT_LT(whole.chunks, tiny.chunks);
      // fp64 damped: the same arithmetic per row. fp32, or polished: each chunk stops refining (polishing) at its
      // own point below the tolerance.
      const bool same_arithmetic = precision == SolvePrecision::kFloat64 && !polish;
      EXPECT_LE(rel_diff(tiny.weight, whole.weight), same_arithmetic ? 1e-12 : 1e-8) << "polish " << polish;
      EXPECT_LE(tiny.kkt_residual, 1e-8);
    }
  }
}

TEST_F(SolveTest, PaddingDoesNotChangeTheAnswer) {
  // Rows of sizes 20 and 21 share a chunk (padded to 21); solved alone, each row needs no padding.
  const int64_t out = 8, n = 48;
  const at::Tensor h = spd_with_condition(n, 1e3);
  const at::Tensor w = at::randn({out, n}, kF64);
  at::Tensor mask = at::zeros({out, n}, at::TensorOptions().dtype(at::kBool));
  for (int64_t r = 0; r < out; ++r) {
    const at::Tensor cols = at::randperm(n).narrow(0, 0, 20 + r % 2);
    mask[r].index_fill_(0, cols, true);
  }
  RowSolveOptions options;
  // The damped optimum itself, refined from the first solve: polishing (which starts from the first solve where it
  // runs) would repair a wrong padding as refinement would.
  options.undamped_tolerance = 0;
  const RowSolveResult together = solve_rows_exact(w, mask, h, options);
  EXPECT_EQ(together.chunks, 1);
  // Refinement would repair a wrong padding; on a well-conditioned H the first fp64 solve must already be exact.
  EXPECT_EQ(together.refinement_steps, 0);
  options.memory_budget_bytes = 1;
  const RowSolveResult alone = solve_rows_exact(w, mask, h, options);
  EXPECT_EQ(alone.chunks, out);
  EXPECT_EQ(alone.refinement_steps, 0);
  EXPECT_LE(rel_diff(together.weight, alone.weight), 1e-12);
  EXPECT_LE(rel_diff(together.weight, reference(w, mask, damped(h, solved_damp(together)))), 1e-9);
}

TEST_F(SolveTest, SolutionMinimisesTheObjective) {
  const int64_t out = 32, n = 64;
  const at::Tensor h = gram_hessian(n, 300);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = variable_mask(out, n);
  RowSolveOptions options;
  options.damp = 0;
  const RowSolveResult r = solve_rows_exact(w, mask, h, options);
  const at::Tensor best = objective(r.weight, w, h);
  const at::Tensor slack = 1e-10 * best.abs() + 1e-12;
  // Any other feasible point costs at least as much: the masked dense weights, and perturbations on T.
  EXPECT_TRUE((best <= objective(w.masked_fill(mask, 0), w, h) + slack).all().item<bool>());
  for (double scale : {1e-6, 1e-3, 1.0}) {
    const at::Tensor other = (r.weight + scale * at::randn_like(w)).masked_fill(mask, 0);
    EXPECT_TRUE((best <= objective(other, w, h) + slack).all().item<bool>()) << "perturbation scale " << scale;
  }
  // The per-row KKT condition holds: (H δ)_T ≈ 0 relative to (H w)_T.
  const at::Tensor kept = mask.logical_not();
  const at::Tensor rho = at::matmul(r.weight - w, h) * kept;
  const at::Tensor hw = at::matmul(w, h) * kept;
  const at::Tensor rel = rho.norm(2, {1}) / hw.norm(2, {1}).clamp_min(1e-300);
  EXPECT_LE(rel.max().item<double>(), 1e-8);
  EXPECT_NEAR(rel.max().item<double>(), r.kkt_residual, 1e-9);
}

TEST_F(SolveTest, DeadInputsAreHandled) {
  const int64_t out = 20, n = 40;
  at::Tensor h = gram_hessian(n, 200);
  const at::Tensor dead = at::randperm(n).narrow(0, 0, 5);
  h.index_fill_(0, dead, 0.0);
  h.index_fill_(1, dead, 0.0);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = variable_mask(out, n);
  RowSolveOptions options;
  options.damp = 0;  // singular without the dead-input rule
  const RowSolveResult r = expect_matches_reference(w, mask, h, options, 1e-9, 1e-8);
  EXPECT_EQ(r.dead_inputs, 5);
  EXPECT_EQ(r.damping_retries, 0);
  // A kept weight on a dead input does not affect the output: it stays as it was.
  const at::Tensor kept_dead = mask.index_select(1, dead).logical_not();
  EXPECT_TRUE(
      r.weight.index_select(1, dead).masked_select(kept_dead).equal(w.index_select(1, dead).masked_select(kept_dead)));
}

TEST_F(SolveTest, FailedFactorizationRaisesTheDampingAndIsReported) {
  const int64_t out = 16, n = 48;
  const at::Tensor h = gram_hessian(n, 12);  // rank 12: H and most H_TT are singular
  const at::Tensor w = at::randn({out, n}, kF64);
  // In fp32 too, where a 2:4 mask puts all rows in one chunk solved through H⁻¹: the failed H⁻¹ must raise the
  // damping before the fp32 probe of the chunk's first rows is tried.
  for (const SolvePrecision precision : {SolvePrecision::kFloat64, SolvePrecision::kFloat32Refined}) {
    const at::Tensor mask = precision == SolvePrecision::kFloat64 ? variable_mask(out, n) : n_m_mask(w, 2, 4);
    RowSolveOptions options;
    options.damp = 0;
    options.precision = precision;
    const RowSolveResult r = solve_rows_exact(w, mask, h, options);
    EXPECT_GT(r.damping_retries, 0);
    EXPECT_GT(r.damping, 0);
    // The answer is the exact one for the damping reported, to what fp64 holds at that conditioning: both it and
    // the reference carry an error of about cond(H + damping) · 1e-16 relative, and the smallest damping that makes
    // this rank-12 H factorizable leaves cond near 1e10 (measured: 1.3e-6 apart at damping 2e-10).
    const at::Tensor hd = h.clone();
    hd.diagonal().add_(r.damping);
    const double cond = at::linalg_eigvalsh(hd).max().item<double>() / r.damping;
    EXPECT_LE(rel_diff(r.weight, reference(w, mask, hd)), std::max(1e-6, 1e-14 * cond))
        << "precision " << static_cast<int>(precision) << " damping " << r.damping;
    EXPECT_LE(r.kkt_residual, 1e-8);
  }
}

TEST_F(SolveTest, IndefiniteHessianIsANumericError) {
  const int64_t n = 16;
  at::Tensor h = spd_with_condition(n, 10);
  h = h - 2 * at::outer(at::ones({n}, kF64), at::ones({n}, kF64)) / n * 5;  // a negative eigenvalue, diag > 0
  h.diagonal().clamp_min_(0.1);
  const at::Tensor w = at::randn({4, n}, kF64);
  const at::Tensor mask = at::rand({4, n}, kF64) < 0.3;
  test::expect_error([&] { solve_rows_exact(w, mask, h); }, ErrorKind::kNumeric,
                     {"solve_rows_exact", "factorization failed at every damping", "not positive semi-definite"});
  at::Tensor negative = spd_with_condition(n, 10);
  negative[3][3] = -1.0;
  test::expect_error([&] { solve_rows_exact(w, mask, negative); }, ErrorKind::kNumeric, {"negative diagonal"});
  at::Tensor nan_h = spd_with_condition(n, 10);
  nan_h[2][5] = NAN;
  test::expect_error([&] { solve_rows_exact(w, mask, nan_h); }, ErrorKind::kNumeric, {"Hessian", "NaN"});
}

TEST_F(SolveTest, KeepsTheWeightDtype) {
  const int64_t out = 16, n = 32;
  const at::Tensor h = gram_hessian(n, 100).to(at::kFloat);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = n_m_mask(w, 2, 4);
  for (at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    const RowSolveResult r = solve_rows_exact(w.to(type), mask, h);
    EXPECT_EQ(r.weight.scalar_type(), type);
    EXPECT_TRUE(r.weight.masked_select(mask).eq(0).all().item<bool>());
    const at::Tensor ref = reference(w.to(type), mask, damped(h, solved_damp(r)));
    EXPECT_LE(rel_diff(r.weight, ref), type == at::kFloat ? 1e-6 : 1e-2);
  }
}

TEST_F(SolveTest, IterativeSolverReachesTheExactSolution) {
  const int64_t out = 32, n = 64;
  const at::Tensor h = spd_with_condition(n, 1e3);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = variable_mask(out, n);
  RowSolveOptions options;
  const at::Tensor exact = reference(w, mask, h);  // undamped: H is not singular, so no damping is applied
  const double tolerance = 1e-10;
  // The error in the H-norm is bounded by the residual; with cond(H) = 1e3 the weights agree to about
  // cond · tolerance relative to the update.
  for (SolvePrecision precision : {SolvePrecision::kFloat64, SolvePrecision::kFloat32Refined}) {
    options.precision = precision;
    const at::Tensor start = w.masked_fill(mask, 0) + 0.1 * at::randn_like(w);
    const RowSolveResult r = solve_rows_iterative(w, mask, h, start, tolerance, 5000, options);
    EXPECT_TRUE(r.converged);
    EXPECT_EQ(r.damping, 0);
    EXPECT_LE(r.kkt_residual, tolerance);
    EXPECT_EQ(r.kkt_residual_undamped, r.kkt_residual);
    EXPECT_GT(r.iterations, 0);
    EXPECT_TRUE(r.weight.masked_select(mask).eq(0).all().item<bool>());
    EXPECT_LE(rel_diff(r.weight, exact), 1e3 * tolerance);
  }
  // An iteration budget too small to converge is reported, not hidden.
  options.precision = SolvePrecision::kFloat64;
  const RowSolveResult short_run = solve_rows_iterative(w, mask, h, w.masked_fill(mask, 0), 1e-12, 2, options);
  EXPECT_FALSE(short_run.converged);
  EXPECT_EQ(short_run.iterations, 2);
  EXPECT_GT(short_run.kkt_residual, 1e-12);
}

// Every formulation of the iterative solver, for the tests that run each.
constexpr IterativePreconditioner kEveryPreconditioner[] = {
    IterativePreconditioner::kAuto, IterativePreconditioner::kPrunedSpace, IterativePreconditioner::kMaskedCholesky,
    IterativePreconditioner::kLowRank, IterativePreconditioner::kInverseBlock};

// A tolerance ten times below the default, so that the answers can be held to 1e-6 of the closed form (the default's
// 1e-8 KKT residual leaves up to cond(H_TT) · 1e-8 in the weights: 1.1e-6 measured on one of these Hessians).
constexpr double kTightTolerance = 1e-9;

// The closed form ŵ_T = w_T + H_TT⁻¹ H_TS w_S in fp64, on correlated LLM-like Hessians (outlier inputs, full rank),
// at 50% unstructured and 2:4, with the default settings (fp32 CG refined against fp64 residuals) but kTightTolerance.
TEST_F(SolveTest, IterativeSolverMatchesTheClosedFormOnCorrelatedHessians) {
  const int64_t out = 48, n = 128;
  const at::Tensor h = gram_hessian(n, 4 * n);
  const at::Tensor w = at::randn({out, n}, kF64);
  for (int kind = 0; kind < 2; ++kind) {
    const at::Tensor mask = kind == 0 ? matrix_threshold_mask(w, 0.5) : n_m_mask(w, 2, 4);
    const at::Tensor exact = reference(w, mask, h);
    for (SolvePrecision precision : {SolvePrecision::kFloat32Refined, SolvePrecision::kFloat64}) {
      RowSolveOptions options;
      options.precision = precision;
      const RowSolveResult r =
          solve_rows_iterative(w, mask, h, w.masked_fill(mask, 0), kTightTolerance, kDefaultQpMaxIterations, options);
      SCOPED_TRACE(kind == 0 ? "unstructured 50%" : "2:4");
      EXPECT_TRUE(r.converged);
      EXPECT_EQ(r.damping, 0) << "full-rank H is solved undamped";
      EXPECT_LE(r.kkt_residual_undamped, 1e-8);
      expect_closed_form_answer(r, w, mask, h, exact, 1e-8);
    }
  }
}

// --qp-memory bounds the rows one CG runs on at once: a budget of a few rows splits the layer into chunks, each solved
// against the shared H, in order, and the answer is still the closed form for every row.
TEST_F(SolveTest, IterativeSolverSplitsTheRowsWithinTheMemoryBudget) {
  const int64_t out = 40, n = 128;
  const at::Tensor h = gram_hessian(n, 4 * n);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = matrix_threshold_mask(w, 0.5);
  const at::Tensor exact = reference(w, mask, h);
  RowSolveOptions options;
  options.precision = SolvePrecision::kFloat32Refined;
  const RowSolveResult whole =
      solve_rows_iterative(w, mask, h, w.masked_fill(mask, 0), kTightTolerance, kDefaultQpMaxIterations, options);
  EXPECT_EQ(whole.chunks, 1);
  // About 16 rows' worth (8 · (24 n + 2 k²) bytes a row, k = 32 here: row_solver_iterative.cpp): 16 + 16 + 8 rows.
  options.memory_budget_bytes = 16 * 8 * (24 * n + 2 * 32 * 32);
  const RowSolveResult split =
      solve_rows_iterative(w, mask, h, w.masked_fill(mask, 0), kTightTolerance, kDefaultQpMaxIterations, options);
  EXPECT_EQ(split.chunks, 3);
  EXPECT_TRUE(split.converged);
  EXPECT_LE(split.kkt_residual_undamped, kTightTolerance);
  EXPECT_GT(split.iterations, 0);
  expect_closed_form_answer(split, w, mask, h, exact, 1e-8);
  // A budget below one row still solves one row at a time.
  options.memory_budget_bytes = 1;
  const RowSolveResult single = solve_rows_iterative(w.narrow(0, 0, 3), mask.narrow(0, 0, 3), h,
                                                     w.narrow(0, 0, 3).masked_fill(mask.narrow(0, 0, 3), 0),
                                                     kTightTolerance, kDefaultQpMaxIterations, options);
  EXPECT_EQ(single.chunks, 3);
  expect_closed_form_answer(single, w.narrow(0, 0, 3), mask.narrow(0, 0, 3), h, exact.narrow(0, 0, 3), 1e-8);
}

// Dead inputs (H_jj = 0) leave H singular as given; the dead-input rule makes it definite, so no damping is used and
// the answer is the closed form on the fixed H. A rank-deficient H is singular: damped, and exact for that damping.
TEST_F(SolveTest, IterativeSolverOnSingularHessians) {
  const int64_t out = 24, n = 64;
  at::Tensor h = gram_hessian(n, 4 * n);
  const at::Tensor dead = at::randperm(n).narrow(0, 0, 6);
  h.index_fill_(0, dead, 0.0);
  h.index_fill_(1, dead, 0.0);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = n_m_mask(w, 2, 4);
  RowSolveResult r = solve_rows_iterative(w, mask, h, w.masked_fill(mask, 0), 1e-10, 2000);
  EXPECT_EQ(r.dead_inputs, 6);
  EXPECT_EQ(r.damping, 0);
  EXPECT_LE(r.kkt_residual_undamped, 1e-8);
  EXPECT_LE(rel_diff(r.weight, reference(w, mask, damped(h, 0))), 1e-7);

  const at::Tensor low = gram_hessian(n, 24);  // rank 24
  RowSolveOptions options;
  options.damp = 1e-4;
  r = solve_rows_iterative(w, mask, low, w.masked_fill(mask, 0), 1e-10, 4000, options);
  EXPECT_TRUE(r.converged);
  EXPECT_NEAR(r.damping, 1e-4 * low.diagonal().mean().item<double>(), 1e-9 * r.damping);
  EXPECT_LE(rel_diff(r.weight, reference(w, mask, damped(low, 1e-4))), 1e-6);
  // Against the undamped (singular) problem the damped optimum leaves a residual, reported as such.
  EXPECT_GT(r.kkt_residual_undamped, r.kkt_residual);
}

// Every formulation of the iterative solver (pruned space, kept space with any of its preconditioners) reaches the
// closed form in both precisions, at 50% unstructured and 2:4, on an LLM-like Hessian scaled to a unit diagonal and
// on the same with its inputs' scales spread over three decades (condition estimate past 1e5: kAuto's fp64 rounds
// take the pruned space there, the kept space on the first; the gram matrix as drawn, with its outlier features,
// has an estimate on either side of 1e5 from one draw to the next).
TEST_F(SolveTest, IterativeFormulationsReachTheClosedForm) {
  const int64_t out = 32, n = 96;
  const at::Tensor drawn = gram_hessian(n, 3 * n);
  const at::Tensor unit = drawn.diagonal().rsqrt();
  const at::Tensor gram = drawn * unit.unsqueeze(0) * unit.unsqueeze(1);
  const at::Tensor spread = at::pow(10.0, at::linspace(-1.5, 1.5, n, kF64));
  const at::Tensor w = at::randn({out, n}, kF64);
  int auto_pruned = 0, auto_kept = 0;
  for (int kind = 0; kind < 4; ++kind) {
    const at::Tensor h = kind < 2 ? gram : gram * spread.unsqueeze(0) * spread.unsqueeze(1);
    const at::Tensor mask = kind % 2 == 0 ? matrix_threshold_mask(w, 0.5) : n_m_mask(w, 2, 4);
    const at::Tensor exact = reference(w, mask, h);
    for (IterativePreconditioner formulation : kEveryPreconditioner) {
      for (SolvePrecision precision : {SolvePrecision::kFloat32Refined, SolvePrecision::kFloat64}) {
        RowSolveOptions options;
        options.precision = precision;
        options.preconditioner = formulation;
        SCOPED_TRACE(::testing::Message() << "mask " << kind << " formulation " << static_cast<int>(formulation)
                                          << " precision " << static_cast<int>(precision));
        const RowSolveResult r = solve_rows_iterative(w, mask, h, w.masked_fill(mask, 0), 1e-10, 5000, options);
        EXPECT_TRUE(r.converged);
        EXPECT_GT(r.iterations, 0);
        // The pruned space where asked (kAuto: in fp64), where it does all the work in fp64; in fp32 it may hand
        // over to the kept space once its corrections stop cutting the residual tenfold.
        const bool auto_pruned_space = formulation == IterativePreconditioner::kAuto &&
                                       precision == SolvePrecision::kFloat64 &&
                                       auto_uses_pruned_space(r.condition_estimate);
        if (formulation == IterativePreconditioner::kAuto && precision == SolvePrecision::kFloat64)
          ++(auto_pruned_space ? auto_pruned : auto_kept);
        const bool pruned_space = formulation == IterativePreconditioner::kPrunedSpace || auto_pruned_space;
        if (pruned_space && precision == SolvePrecision::kFloat64) {
          EXPECT_EQ(r.pruned_space_rounds, r.refinement_steps);
        } else if (pruned_space) {
          EXPECT_GE(r.pruned_space_rounds, 1);
        } else {
          EXPECT_EQ(r.pruned_space_rounds, 0);
        }
        expect_closed_form_answer(r, w, mask, h, exact, 1e-9);
      }
    }
  }
  // Both of kAuto's fp64 branches ran.
  EXPECT_GT(auto_pruned, 0);
  EXPECT_GT(auto_kept, 0);
}

// The masked-Cholesky preconditioner is what its spectrum says: on an LLM-like Hessian, where L_TT L_TTᵀ captures
// most of H_TT (preconditioned condition number about 2 here), CG needs far fewer iterations than with the low-rank
// preconditioner, in fp32 with reliable updates as in fp64, and fp32 holds.
TEST_F(SolveTest, MaskedCholeskyNeedsFewerIterationsThanLowRank) {
  const int64_t out = 32, n = 192;
  const at::Tensor h = gram_hessian(n, 3 * n);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = matrix_threshold_mask(w, 0.5);
  const auto run = [&](IterativePreconditioner kind, SolvePrecision precision) {
    RowSolveOptions options;
    options.precision = precision;
    options.preconditioner = kind;
    return solve_rows_iterative(w, mask, h, w.masked_fill(mask, 0), 1e-10, 5000, options);
  };
  for (SolvePrecision precision : {SolvePrecision::kFloat32Refined, SolvePrecision::kFloat64}) {
    const RowSolveResult masked = run(IterativePreconditioner::kMaskedCholesky, precision);
    const RowSolveResult low_rank = run(IterativePreconditioner::kLowRank, precision);
    EXPECT_TRUE(masked.converged && low_rank.converged);
    EXPECT_EQ(masked.fp64_fallback_rows, 0);
    EXPECT_LT(3 * masked.iterations, 2 * low_rank.iterations) << masked.iterations << " against " << low_rank.iterations
                                                              << " (precision " << static_cast<int>(precision) << ")";
    expect_closed_form_answer(masked, w, mask, h, reference(w, mask, h), 1e-9);
  }
}

// The iterative solver's account of its work: row_iterations counts the rows in the batch at each iteration, so
// copies of one row converge together (copies x iterations) and a row with nothing pruned, solved by w itself, never
// counts; an fp32 CG replaces every row's residual by its fp64 one at least once (before it stops), an fp64 CG none;
// and the timed parts lie within the CG's time. (The low rank: the masked Cholesky would order the inputs of a layer
// whose rows share one mask kept-first, and solve it in an iteration.)
TEST_F(SolveTest, IterativeSolverAccountsForItsWork) {
  const int64_t n = 192, copies = 6;
  const at::Tensor h = gram_hessian(n, n + n / 4);
  const auto run = [&](const at::Tensor& w, const at::Tensor& mask, SolvePrecision precision) {
    RowSolveOptions options;
    options.precision = precision;
    options.preconditioner = IterativePreconditioner::kLowRank;
    const RowSolveResult r = solve_rows_iterative(w, mask, h, w.masked_fill(mask, 0), 1e-10, 5000, options);
    EXPECT_TRUE(r.converged);
    expect_closed_form_answer(r, w, mask, h, reference(w, mask, h), 1e-9);
    EXPECT_GT(r.work.operator_seconds, 0);
    EXPECT_LE(r.work.operator_seconds + r.work.replacement_seconds, r.work.cg_seconds);
    return r;
  };
  for (SolvePrecision precision : {SolvePrecision::kFloat32Refined, SolvePrecision::kFloat64}) {
    const bool fp32 = precision == SolvePrecision::kFloat32Refined;
    const at::Tensor row = at::randn({1, n}, kF64);
    const at::Tensor row_mask = at::rand({1, n}, kF64) < 0.5;
    const RowSolveResult same =
        run(row.expand({copies, n}).contiguous(), row_mask.expand({copies, n}).contiguous(), precision);
    EXPECT_GT(same.iterations, 4);
    // The copies' round-off may differ by the products' kernels for different rows: one may leave an iteration early.
    EXPECT_LE(same.work.row_iterations, copies * same.iterations);
    EXPECT_GT(same.work.row_iterations, copies * (same.iterations - 2));
    if (fp32) {
      EXPECT_GE(same.work.replaced_rows, copies);
      EXPECT_GT(same.work.replacement_seconds, 0);
    } else {
      EXPECT_EQ(same.work.replaced_rows, 0);
      EXPECT_EQ(same.work.replacement_seconds, 0);
    }
    // Two rows with masks of their own and one with nothing pruned.
    const at::Tensor mixed_mask = at::cat({at::rand({2, n}, kF64) < 0.5, at::zeros({1, n}, row_mask.options())});
    const RowSolveResult mixed = run(at::randn({3, n}, kF64), mixed_mask, precision);
    EXPECT_GT(mixed.work.row_iterations, mixed.iterations) << mixed.iterations << " iterations";
    EXPECT_LE(mixed.work.row_iterations, 2 * mixed.iterations);
  }
}

// The masked Cholesky solves in an order of its own, the inputs pruned in the fewest rows first, as what it leaves
// out of H_TT, L_TS L_TSᵀ, only holds pruned inputs ordered before kept ones: given the inputs most-pruned first (the
// order that leaves the most out), it needs about as many iterations as given them fewest-pruned first.
TEST_F(SolveTest, MaskedCholeskyOrdersInputsByHowOftenTheyArePruned) {
  const int64_t out = 48, n = 192;
  const at::Tensor h = gram_hessian(n, n + n / 4);  // ill-conditioned: the order matters more
  const at::Tensor w = at::randn({out, n}, kF64);
  // Input j is pruned with a probability rising from 5% to 95%.
  const at::Tensor mask = at::rand({out, n}, kF64) < at::linspace(0.05, 0.95, n, kF64).unsqueeze(0);
  const auto iterations = [&](const at::Tensor& order) {
    const at::Tensor ho = h.index_select(0, order).index_select(1, order);
    const at::Tensor wo = w.index_select(1, order), mo = mask.index_select(1, order);
    RowSolveOptions options;
    options.precision = SolvePrecision::kFloat64;
    options.preconditioner = IterativePreconditioner::kMaskedCholesky;
    const RowSolveResult r = solve_rows_iterative(wo, mo, ho, wo.masked_fill(mo, 0), 1e-10, 5000, options);
    EXPECT_TRUE(r.converged);
    expect_closed_form_answer(r, wo, mo, ho, reference(wo, mo, ho), 1e-9);
    return r.iterations;
  };
  const int64_t kept_first = iterations(at::arange(n, at::kLong));
  const int64_t pruned_first = iterations(at::arange(n - 1, -1, -1, at::kLong));
  // Measured: 16-18 either way; without the reordering 32-34 given them most-pruned first.
  EXPECT_LE(pruned_first, kept_first + kept_first / 4) << kept_first << " iterations given the inputs kept-first";
}

// The masked Cholesky solves in the input order its probe keeps (choose_masked_order: by_correlation or
// by_pruned_share) and says which; the answer is the closed form either way, and the same solve twice keeps the same
// order in as many iterations. A layer solved without it (the low rank) is solved in the inputs' own order and names
// none.
TEST_F(SolveTest, MaskedCholeskyReportsTheInputOrderItKept) {
  const int64_t out = 40, n = 160;
  const at::Tensor h = gram_hessian(n, n + n / 2);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = at::rand({out, n}, kF64) < at::linspace(0.1, 0.9, n, kF64).unsqueeze(0);
  const auto run = [&](IterativePreconditioner kind, SolvePrecision precision) {
    RowSolveOptions options;
    options.precision = precision;
    options.preconditioner = kind;
    return solve_rows_iterative(w, mask, h, w.masked_fill(mask, 0), 1e-10, 5000, options);
  };
  const at::Tensor ref = reference(w, mask, h);
  for (SolvePrecision precision : {SolvePrecision::kFloat32Refined, SolvePrecision::kFloat64}) {
    const RowSolveResult first = run(IterativePreconditioner::kMaskedCholesky, precision);
    const RowSolveResult again = run(IterativePreconditioner::kMaskedCholesky, precision);
    EXPECT_TRUE(first.input_order == "by_correlation" || first.input_order == "by_pruned_share") << first.input_order;
    EXPECT_EQ(again.input_order, first.input_order);
    EXPECT_EQ(again.iterations, first.iterations);
    expect_closed_form_answer(first, w, mask, h, ref, 1e-9);
  }
  const RowSolveResult low_rank = run(IterativePreconditioner::kLowRank, SolvePrecision::kFloat32Refined);
  EXPECT_EQ(low_rank.input_order, "");
  expect_closed_form_answer(low_rank, w, mask, h, ref, 1e-9);
}

// kAuto's fp32 rounds run the masked Cholesky where H's condition estimate is high but fp32 still holds: here H is a
// well-conditioned correlation matrix between inputs whose scales span 3.5 decades (estimate about 1e7), and kAuto
// takes the same iterations as the masked Cholesky asked for by name, to the closed form.
TEST_F(SolveTest, AutoRunsTheMaskedCholeskyOnIllConditionedHessians) {
  const int64_t out = 16, n = 2048;  // auto runs it on wide layers only
  const at::Tensor a = gram_hessian(n, 3 * n);
  const at::Tensor inv_sd = a.diagonal().rsqrt();
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = matrix_threshold_mask(w, 0.5);
  // Scales over 3.5 decades (estimate about 1e7) and over 5 (about 1e10, past the estimates that send other fp32
  // work to fp64 directly).
  for (const double decades : {3.5, 5.0}) {
    SCOPED_TRACE(::testing::Message() << "decades " << decades);
    const at::Tensor scale =
        at::pow(10.0, at::linspace(0, decades, n, kF64)).index_select(0, at::randperm(n, at::kLong));
    const at::Tensor h = a * (inv_sd * scale).unsqueeze(0) * (inv_sd * scale).unsqueeze(1);
    const auto run = [&](IterativePreconditioner kind) {
      RowSolveOptions options;
      options.precision = SolvePrecision::kFloat32Refined;
      options.preconditioner = kind;
      return solve_rows_iterative(w, mask, h, w.masked_fill(mask, 0), 1e-10, 5000, options);
    };
    const RowSolveResult automatic = run(IterativePreconditioner::kAuto);
    const RowSolveResult masked = run(IterativePreconditioner::kMaskedCholesky);
    EXPECT_TRUE(auto_uses_masked_cholesky(automatic.condition_estimate, n)) << automatic.condition_estimate;
    EXPECT_FALSE(automatic.fp64_predicted);
    EXPECT_EQ(automatic.fp64_fallback_rows, 0);
    EXPECT_EQ(automatic.iterations, masked.iterations);
    expect_closed_form_answer(automatic, w, mask, h, reference(w, mask, h), 1e-9);
    if (decades > 4) {
      EXPECT_TRUE(predict_fp64(automatic.condition_estimate)) << automatic.condition_estimate;
    }
  }
  EXPECT_TRUE(auto_uses_masked_cholesky(10, n));  // well-conditioned wide layers too
  EXPECT_FALSE(auto_uses_masked_cholesky(1e13, n));
  EXPECT_FALSE(auto_uses_masked_cholesky(1e7, 1024));  // narrow layers keep the low rank
}

// Forced onto a Hessian whose G = H⁻¹ fp64 cannot hold (cond 1e13), the pruned space makes no progress; its rounds
// are undone and the kept space finishes the job, to the same tolerance as the exact solver reaches.
TEST_F(SolveTest, PrunedSpaceOnAHopelessHessianFallsBackToTheKeptSpace) {
  const int64_t out = 16, n = 64;
  const at::Tensor h = spd_with_condition(n, 1e13);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = n_m_mask(w, 2, 4);
  RowSolveOptions options;
  options.damp = 0;
  options.precision = SolvePrecision::kFloat64;
  options.preconditioner = IterativePreconditioner::kPrunedSpace;
  const RowSolveResult r = solve_rows_iterative(w, mask, h, w.masked_fill(mask, 0), 1e-10, 5000, options);
  EXPECT_TRUE(r.converged) << r.kkt_residual;
  EXPECT_LE(r.kkt_residual, 1e-10);
  EXPECT_LT(r.pruned_space_rounds, r.refinement_steps) << "the kept space finished";
}

TEST_F(SolveTest, IterativeSolverFromTheExactSolutionStopsAtOnce) {
  const int64_t out = 8, n = 32;
  const at::Tensor h = gram_hessian(n, 200);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = n_m_mask(w, 2, 4);
  RowSolveOptions options;
  options.damp = 0;
  const RowSolveResult exact = solve_rows_exact(w, mask, h, options);
  const RowSolveResult r = solve_rows_iterative(w, mask, h, exact.weight, 1e-8, 100);
  EXPECT_EQ(r.iterations, 0);
  EXPECT_TRUE(r.converged);
}

// The undamped residual the exact solver reports is the KKT residual of its answer against H without damping.
TEST_F(SolveTest, ExactSolverReportsTheUndampedResidual) {
  const int64_t out = 16, n = 48;
  const at::Tensor h = spd_with_condition(n, 1e3);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = variable_mask(out, n);
  RowSolveOptions options;
  options.damp = 1e-3;
  options.undamped_tolerance = 0;  // the damped optimum, not polished
  const RowSolveResult r = solve_rows_exact(w, mask, h, options);
  const at::Tensor kept = mask.logical_not();
  const at::Tensor rho = at::matmul(r.weight - w, h) * kept;
  const at::Tensor hw = (at::matmul(w, h) * kept).norm(2, {1});
  const at::Tensor rel = at::where(hw > 0, rho.norm(2, {1}) / hw.clamp_min(1e-300), rho.norm(2, {1}));
  EXPECT_NEAR(r.kkt_residual_undamped, rel.max().item<double>(), 1e-6 * rel.max().item<double>());
  EXPECT_GT(r.kkt_residual_undamped, 1e3 * r.kkt_residual) << "damping 1e-3 moves the optimum visibly";
  options.damp = 0;
  const RowSolveResult undamped = solve_rows_exact(w, mask, h, options);
  EXPECT_EQ(undamped.kkt_residual_undamped, undamped.kkt_residual);
}

// Where H as stated is definite, the exact solver's damping only makes its factorizations safe: each row is polished
// to H's own optimum (the fp64 closed form on the undamped H), in both precisions, on an LLM-like H (outlier inputs,
// correlated, full rank) at a damping large enough (1e-3) to move the damped optimum visibly. Where H is singular
// (fewer tokens than inputs) the damped optimum stays, and so does the damping in the report.
TEST_F(SolveTest, ExactSolverPolishesToTheUndampedOptimumWhereHIsDefinite) {
  const int64_t out = 24, n = 64;
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = variable_mask(out, n);
  const int64_t to_solve = at::logical_and(mask.any(1), mask.logical_not().any(1)).sum().item<int64_t>();
  const at::Tensor full_rank = gram_hessian(n, 4 * n);
  const at::Tensor exact = reference(w, mask, full_rank);
  RowSolveOptions options;
  options.damp = 1e-3;
  options.undamped_tolerance = 1e-10;
  for (SolvePrecision precision : {SolvePrecision::kFloat64, SolvePrecision::kFloat32Refined}) {
    options.precision = precision;
    const RowSolveResult r = solve_rows_exact(w, mask, full_rank, options);
    SCOPED_TRACE(precision == SolvePrecision::kFloat64 ? "fp64" : "fp32");
    EXPECT_EQ(r.damped_rows, 0);
    EXPECT_EQ(r.damping, 0) << "the answer carries no damping";
    EXPECT_GT(r.factor_damping, 0) << "the factorizations were damped";
    EXPECT_LE(r.kkt_residual_undamped, 1e-10);
    EXPECT_EQ(r.kkt_residual, r.kkt_residual_undamped);
    // The error in the H-norm is bounded by the residual; the weights agree to about cond · 1e-10 of the update.
    EXPECT_LE(rel_diff(r.weight, exact), 1e-6);
    EXPECT_TRUE(r.weight.masked_select(mask).eq(0).all().item<bool>());
  }
  // Not polished: the damped optimum, 1e-3 away from the undamped one by far more than the tolerance above.
  options.precision = SolvePrecision::kFloat64;
  options.undamped_tolerance = 0;
  const RowSolveResult damped_answer = solve_rows_exact(w, mask, full_rank, options);
  EXPECT_GT(rel_diff(damped_answer.weight, exact), 1e-4);
  EXPECT_EQ(damped_answer.damped_rows, to_solve);

  const at::Tensor singular = gram_hessian(n, n / 2);  // rank n/2
  options.undamped_tolerance = 1e-10;
  const RowSolveResult r = solve_rows_exact(w, mask, singular, options);
  EXPECT_EQ(r.damped_rows, to_solve);
  EXPECT_GT(r.damping, 0);
  EXPECT_LE(rel_diff(r.weight, reference(w, mask, damped(singular, solved_damp(r)))), 1e-8);
}

// fp32 work on a Hessian whose condition estimate fp32 cannot hold goes to fp64 directly, with no fp32 attempt
// wasted; a well-conditioned one stays in fp32.
TEST_F(SolveTest, Fp64IsPredictedFromTheConditionEstimate) {
  EXPECT_FALSE(predict_fp64(10.0));
  EXPECT_TRUE(predict_fp64(1e12));
  EXPECT_TRUE(predict_fp64(std::numeric_limits<double>::infinity()));
  const at::Tensor ill = spd_with_condition(64, 1e12);
  const at::Tensor l = at::linalg_cholesky(ill);
  const double estimate = cholesky_condition_estimate(l);
  EXPECT_GT(estimate, 1.0);
  EXPECT_LE(estimate, 1.01e12) << "a lower bound on cond(H)";
  EXPECT_DOUBLE_EQ(cholesky_condition_estimate(at::diag(at::tensor({2.0, 0.5}, kF64))), 16.0);

  const int64_t out = 24;
  const at::Tensor w = at::randn({out, 64}, kF64);
  const at::Tensor mask = variable_mask(out, 64);
  RowSolveOptions options;
  options.damp = 0;
  options.precision = SolvePrecision::kFloat32Refined;
  for (double cond : {1e1, 1e12}) {
    const at::Tensor h = spd_with_condition(64, cond);
    const bool expect_fp64 = predict_fp64(cholesky_condition_estimate(at::linalg_cholesky(h)));
    EXPECT_EQ(expect_fp64, cond > 1e6) << cond;
    const RowSolveResult exact = solve_rows_exact(w, mask, h, options);
    EXPECT_EQ(exact.fp64_predicted, expect_fp64) << cond;
    EXPECT_EQ(exact.fp64_fallback_rows, 0) << cond;
    EXPECT_LE(exact.kkt_residual, 1e-8) << cond;
    const RowSolveResult iter = solve_rows_iterative(w, mask, h, w.masked_fill(mask, 0), 1e-10, 5000, options);
    // Except where kAuto runs the masked Cholesky, whose fp32 passes are tried first (a round that does not pay
    // goes to fp64).
    EXPECT_EQ(iter.fp64_predicted, expect_fp64 && !auto_uses_masked_cholesky(iter.condition_estimate, 64)) << cond;
    EXPECT_LE(iter.kkt_residual, 1e-10) << cond;
  }
}

// auto: the exact solver where the per-row systems are small (narrow layers, or few pruned or few kept weights),
// the iterative one on wide layers at 50%.
TEST_F(SolveTest, SolverChoiceFollowsThePredictedCost) {
  const auto mask = [](int64_t rows, int64_t n, double fraction) {
    return at::rand({rows, n}, kF64).argsort(/*stable=*/false, /*dim=*/1) < static_cast<int64_t>(n * fraction);
  };
  const SolverCostPrediction narrow = predict_solver_cost(mask(512, 256, 0.5));
  EXPECT_EQ(narrow.choice, RowSolverKind::kExact);
  EXPECT_LT(narrow.exact_units, narrow.iterative_units);
  const SolverCostPrediction wide = predict_solver_cost(mask(512, 8192, 0.5));
  EXPECT_EQ(wide.choice, RowSolverKind::kIterative);
  EXPECT_LT(wide.iterative_units, wide.exact_units);
  // Exact cost per product grows about like n at a fixed fraction (less here: the wide layer's systems factor at a
  // higher rate); the iterative cost stays nearly flat.
  EXPECT_GT(wide.exact_units, 3 * narrow.exact_units);
  EXPECT_LT(wide.iterative_units, 2 * narrow.iterative_units);
  EXPECT_EQ(predict_solver_cost(mask(512, 8192, 0.01)).choice, RowSolverKind::kExact) << "81 unknowns per row";
  EXPECT_EQ(predict_solver_cost(mask(512, 8192, 0.99)).choice, RowSolverKind::kExact) << "82 kept per row";
}

// A CG that will not reach the tolerance within its break-even iterations is given up early, from the residuals'
// fall, not only at the limit; auto then returns the exact solver's answer.
TEST_F(SolveTest, AutoGivesUpACgThatWouldCostMoreThanTheExactSolver) {
  const int64_t out = 24, n = 96;
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = variable_mask(out, n);
  RowSolveOptions options;
  options.precision = SolvePrecision::kFloat64;
  const at::Tensor hard = spd_with_condition(n, 1e8);
  const at::Tensor start = w.masked_fill(mask, 0);
  options.abandon_iterations = 40;
  const RowSolveResult given_up = solve_rows_iterative(w, mask, hard, start, 1e-10, 5000, options);
  EXPECT_TRUE(given_up.abandoned);
  EXPECT_FALSE(given_up.converged);
  EXPECT_LT(given_up.iterations, 40) << "projected from the residuals' fall at 16 or 32 iterations";
  EXPECT_GE(given_up.iterations, 16);
  options.abandon_iterations = 0;
  const RowSolveResult unbounded = solve_rows_iterative(w, mask, hard, start, 1e-10, 5000, options);
  EXPECT_FALSE(unbounded.abandoned);
  EXPECT_GT(unbounded.iterations, 40) << "the problem does need more iterations than the limit";

  SolverCostPrediction predicted;
  predicted.choice = RowSolverKind::kIterative;
  predicted.break_even_iterations = 40;
  options.abandon_iterations = 0;
  const RowSolveResult fell_back = solve_rows_auto(w, mask, hard, start, 1e-10, 5000, options, predicted);
  const RowSolveResult exact = solve_rows_exact(w, mask, hard, options);
  EXPECT_GT(fell_back.abandoned_iterations, 0);
  EXPECT_EQ(fell_back.iterations, 0);
  EXPECT_TRUE(at::equal(fell_back.weight, exact.weight));
  // An easy layer stays with CG.
  const at::Tensor easy = spd_with_condition(n, 10);
  const RowSolveResult cg = solve_rows_auto(w, mask, easy, start, 1e-10, 5000, options, predicted);
  EXPECT_EQ(cg.abandoned_iterations, 0);
  EXPECT_GT(cg.iterations, 0);
  EXPECT_LE(cg.kkt_residual, 1e-10);
  EXPECT_LE(rel_diff(cg.weight, reference(w, mask, easy)), 1e-6);
}

TEST_F(SolveTest, InputsAreValidated) {
  const at::Tensor w = at::randn({4, 6}, kF64);
  const at::Tensor mask = at::zeros({4, 6}, at::TensorOptions().dtype(at::kBool));
  const at::Tensor h = at::eye(6, kF64);
  test::expect_error([&] { solve_rows_exact(w, mask, at::eye(5, kF64)); }, ErrorKind::kInput,
                     {"solve_rows_exact: Hessian", "expected [6, 6]", "found [5, 5]"});
  test::expect_error(
      [&] {
        solve_rows_exact(w, at::zeros({4, 5}, mask.options()), h);
      },
      ErrorKind::kInput, {"mask", "expected [4, 6]", "found [4, 5]"});
  test::expect_error([&] { solve_rows_exact(w, mask.to(at::kFloat), h); }, ErrorKind::kInput,
                     {"mask", "expected Bool", "found Float"});
  test::expect_error([&] { solve_rows_exact(w.flatten(), mask, h); }, ErrorKind::kInput,
                     {"weight", "expected [out, in]", "found [24]"});
  test::expect_error([&] { solve_rows_exact(w.to(at::kInt), mask, h); }, ErrorKind::kInput, {"weight", "Int"});
  test::expect_error(
      [&] {
        solve_rows_iterative(w, mask, h, at::zeros({3, 6}, kF64), 1e-6, 10);
      },
      ErrorKind::kInput, {"solve_rows_iterative: start", "expected [4, 6]", "found [3, 6]"});
  at::Tensor bad = w.clone();
  bad[1][2] = INFINITY;
  test::expect_error([&] { solve_rows_exact(bad, mask, h); }, ErrorKind::kNumeric, {"weight", "infinite"});
  RowSolveOptions options;
  options.damp = -1;
  test::expect_error([&] { solve_rows_exact(w, mask, h, options); }, ErrorKind::kUsage, {"damping"});
}

TEST_F(SolveTest, TrivialRowsAndEmptyLayers) {
  const int64_t out = 6, n = 10;
  const at::Tensor h = gram_hessian(n, 50);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor none = at::zeros({out, n}, at::TensorOptions().dtype(at::kBool));
  const RowSolveResult keep = solve_rows_exact(w, none, h);
  EXPECT_TRUE(keep.weight.equal(w));
  EXPECT_EQ(keep.chunks, 0);
  const RowSolveResult all = solve_rows_exact(w, none.logical_not(), h);
  EXPECT_TRUE(all.weight.eq(0).all().item<bool>());
  EXPECT_EQ(all.kkt_residual, 0);
  const at::Tensor empty = at::zeros({0, n}, kF64);
  EXPECT_EQ(solve_rows_exact(empty, at::zeros({0, n}, none.options()), h).weight.size(0), 0);
}

// The gather reference: ATen's two-index gather, then identity rows and columns past each row's size.
at::Tensor reference_gather(const at::Tensor& source, const at::Tensor& idx, const at::Tensor& sizes) {
  at::Tensor a = at::index(source, {idx.unsqueeze(2), idx.unsqueeze(1)});
  if (!sizes.defined()) return a;
  const at::Tensor valid = at::arange(idx.size(1), idx.options()).unsqueeze(0) < sizes.unsqueeze(1);
  const at::Tensor keep = valid.to(a.scalar_type());
  a = a * keep.unsqueeze(2) * keep.unsqueeze(1);
  a.diagonal(0, 1, 2).masked_fill_(valid.logical_not(), 1.0);
  return a;
}

// Random systems: each row picks `size` distinct sorted columns of n; positions past it hold arbitrary columns.
std::pair<at::Tensor, at::Tensor> random_systems(int64_t b, int64_t m, int64_t n, bool padded) {
  at::Tensor idx = at::randint(n, {b, m}, at::TensorOptions().dtype(at::kLong));
  at::Tensor sizes = padded ? at::randint(0, m + 1, {b}, idx.options()) : at::Tensor();
  for (int64_t r = 0; r < b; ++r) {
    const at::Tensor cols = std::get<0>(at::randperm(n, idx.options()).narrow(0, 0, m).sort());
    idx[r].copy_(cols);
  }
  return {idx, sizes};
}

void expect_gather_matches(const at::Tensor& source, const at::Tensor& idx, const at::Tensor& sizes,
                           const std::string& what) {
  const at::Tensor want = reference_gather(source.cpu(), idx.cpu(), sizes.defined() ? sizes.cpu() : sizes);
  const at::Tensor full = solve_detail::gather_systems(source, idx, sizes, /*lower_only=*/false).cpu();
  EXPECT_TRUE(at::equal(full, want)) << what << ": full matrices";
  const at::Tensor lower = solve_detail::gather_systems(source, idx, sizes, /*lower_only=*/true).cpu();
  EXPECT_TRUE(at::equal(lower.tril(), want.tril())) << what << ": lower triangles";
}

TEST_F(SolveTest, GatherKernelMatchesTheIndexReference) {
  for (at::ScalarType type : {at::kFloat, at::kDouble})
    for (bool padded : {false, true})
      for (auto [b, m, n] :
           {std::tuple<int64_t, int64_t, int64_t>{7, 13, 40}, {33, 64, 64}, {1, 1, 3}, {0, 5, 9}, {5, 0, 9}}) {
        const at::Tensor source = at::randn({n, n}, at::TensorOptions().dtype(type));
        const auto [idx, sizes] = random_systems(b, m, n, padded);
        expect_gather_matches(source, idx, sizes,
                              fmt::format("{} b={} m={} n={} padded={}", c10::toString(type), b, m, n, padded));
      }
}

// The masked passes against per-row triangular solves in fp64 (L_TT picked out of L row by row): forward,
// L_TT z_T = rhs_T − L_TS given_S with z_S = given_S; backward, L_TTᵀ x_T = rhs_T with x_S = 0, and Lᵀ x. Sizes
// cover a partial block at either end, and rows with nothing or everything kept.
void expect_masked_passes_match(const at::Tensor& l64, const at::Tensor& kept_bool, at::ScalarType type,
                                at::Device device, double tolerance) {
  const int64_t rows = kept_bool.size(0);
  const at::Tensor rhs = at::randn(kept_bool.sizes(), kF64), given = at::randn(kept_bool.sizes(), kF64);
  const auto on = [&](const at::Tensor& t) { return t.to(device, type).contiguous(); };
  const at::Tensor kept = on(kept_bool.to(kF64));
  const at::Tensor z = solve_detail::masked_forward(on(l64), on(rhs), on(given), kept).to(at::kCPU, at::kDouble);
  at::Tensor sums;
  const at::Tensor x = solve_detail::masked_backward(on(l64), on(rhs), kept, &sums).to(at::kCPU, at::kDouble);
  sums = sums.to(at::kCPU, at::kDouble);
  for (int64_t r = 0; r < rows; ++r) {
    const at::Tensor t = kept_bool[r].nonzero().squeeze(1), s = kept_bool[r].logical_not().nonzero().squeeze(1);
    at::Tensor z_want = given[r].clone(), x_want = at::zeros_like(rhs[r]);
    if (t.numel() > 0) {
      const at::Tensor ltt = l64.index_select(0, t).index_select(1, t);
      const at::Tensor lts = l64.index_select(0, t).index_select(1, s);
      const at::Tensor b = rhs[r].index_select(0, t) - at::matmul(lts, given[r].index_select(0, s));
      z_want.index_copy_(0, t, at::linalg_solve_triangular(ltt, b.unsqueeze(1), /*upper=*/false).squeeze(1));
      x_want.index_copy_(0, t,
                         at::linalg_solve_triangular(ltt.t(), rhs[r].index_select(0, t).unsqueeze(1), true).squeeze(1));
    }
    const at::Tensor sums_want = at::matmul(l64.t(), x_want);
    EXPECT_LE(rel_diff(z[r], z_want), tolerance) << "forward, row " << r;
    EXPECT_LE(rel_diff(x[r], x_want), tolerance) << "backward, row " << r;
    EXPECT_LE(rel_diff(sums[r], sums_want), tolerance) << "backward sums, row " << r;
  }
}

at::Tensor masks_with_extremes(int64_t rows, int64_t n) {
  at::Tensor kept = at::rand({rows, n}, kF64) < at::rand({rows, 1}, kF64);
  kept[0].fill_(true);
  kept[1].fill_(false);
  return kept;
}

TEST_F(SolveTest, MaskedCholeskyPassesMatchPerRowTriangularSolves) {
  // Rows in one thread's pass (fewer than two groups of lanes each: 45, 37, 9, 3) and split among 3 threads (150:
  // 64 + 64 + 22, 70: 48 + 22), lanes left over; n = 300: two whole blocks and a partial one; n = 700: a whole span
  // of 4 blocks and a partial one, whose blocks' products with the span's blocks done are taken apart from the
  // products with the spans done.
  // Both builds of the CPU kernel: the AVX2 one (where this CPU has it) and the baseline one.
  const int threads = at::get_num_threads();
  at::set_num_threads(3);
  for (auto build : {solve_detail::MaskedKernelBuild::kBest, solve_detail::MaskedKernelBuild::kBaseline}) {
    solve_detail::set_masked_kernel_build(build);
    for (auto [rows, n] :
         {std::pair<int64_t, int64_t>{45, 150}, {37, 300}, {9, 64}, {3, 5}, {150, 300}, {70, 150}, {40, 700}}) {
      const at::Tensor l64 = at::linalg_cholesky(gram_hessian(n, 3 * n));
      const at::Tensor kept = masks_with_extremes(rows, n);
      SCOPED_TRACE(::testing::Message() << "n " << n
                                        << (build == solve_detail::MaskedKernelBuild::kBaseline ? " baseline" : ""));
      // fp32 passes: round-off relative to the conditioning of L_TT (a few hundred here).
      expect_masked_passes_match(l64, kept, at::kDouble, at::kCPU, 1e-11);
      expect_masked_passes_match(l64, kept, at::kFloat, at::kCPU, 1e-3);
    }
  }
  solve_detail::set_masked_kernel_build(solve_detail::MaskedKernelBuild::kBest);
  at::set_num_threads(threads);
}

// One split-CG step (the CPU kernel, and the ATen composition other devices run) against its formula in float64
// on the same inputs, row by row: rows that are inactive, whose p · q is not positive (p = 0) or whose r · r is 0;
// lengths with and without a remainder past the kernel's 8 chains; rows split among 3 threads.
solve_detail::SplitCgState split_cg_formula(const solve_detail::SplitCgState& in, const at::Tensor& f,
                                            const at::Tensor& y, const at::Tensor& kept, const at::Tensor& active) {
  // Copies: .to() returns the tensor itself where it is float64 already.
  solve_detail::SplitCgState out{in.p.to(kF64).clone(), in.r.to(kF64).clone(), in.x.to(kF64).clone(),
                                 in.rz.to(kF64).clone()};
  const at::Tensor f64 = f.to(kF64), y64 = y.to(kF64), kept64 = kept.to(kF64);
  for (int64_t i = 0; i < in.p.size(0); ++i) {
    const at::Tensor q = out.p[i] - kept64[i] * f64[i];
    const double pq = out.p[i].dot(q).item<double>(), rz = out.rz[i].item<double>();
    const bool on = active[i].item<bool>();
    const double alpha = on && pq > 0 ? rz / pq : 0.0;
    out.x[i] += alpha * y64[i];
    out.r[i] -= alpha * q;
    const double rr = out.r[i].dot(out.r[i]).item<double>();
    const double beta = on && rz > 0 ? rr / rz : 0.0;
    out.p[i] = out.r[i] + beta * out.p[i];
    out.rz[i] = rr;
  }
  return out;
}

TEST_F(SolveTest, SplitCgStepMatchesItsFormulaInFloat64) {
  const int threads = at::get_num_threads();
  at::set_num_threads(3);
  for (const at::ScalarType type : {at::kFloat, at::kDouble})
    for (const int64_t n : {int64_t{5}, int64_t{37}, int64_t{300}}) {
      const int64_t rows = 50;
      const auto options = at::TensorOptions().dtype(type);
      const at::Tensor p = at::randn({rows, n}, options), r = at::randn({rows, n}, options);
      p[3].zero_();  // p · q = 0: no step
      r[4].zero_();  // r · r = 0
      const at::Tensor rz = at::linalg_vecdot(r, r);
      const at::Tensor active = at::rand({rows}) > 0.3;
      active[3] = true;
      active[4] = true;
      // f a tenth of p keeps p · q near |p|², as the passes' f does (there p · q ≥ |p|², I + B Bᵀ being at least I):
      // with f as large as p, p · q could cancel to near 0 on a short row, and α's fp32 round-off grow past the
      // tolerance with it (one seed in a few hundred at n = 5).
      const at::Tensor x = at::randn({rows, n}, options), f = at::randn({rows, n}, options) * 0.1,
                       y = at::randn({rows, n}, options), kept = (at::rand({rows, n}) > 0.5).to(type);
      const solve_detail::SplitCgState in{p, r, x, rz};
      const solve_detail::SplitCgState want = split_cg_formula(in, f, y, kept, active);
      const double tolerance = type == at::kFloat ? 1e-5 : 1e-12;
      for (const bool kernel : {true, false}) {
        SCOPED_TRACE(::testing::Message() << c10::toString(type) << " n " << n << (kernel ? " kernel" : " ATen"));
        solve_detail::SplitCgState got{p.clone(), r.clone(), x.clone(), rz.clone()};
        if (kernel)
          solve_detail::split_cg_step(got, f, y, kept, active);
        else
          solve_detail::split_cg_step_reference(got, f, y, kept, active);
        EXPECT_LE(rel_diff(got.p.to(kF64), want.p), tolerance);
        EXPECT_LE(rel_diff(got.r.to(kF64), want.r), tolerance);
        EXPECT_LE(rel_diff(got.x.to(kF64), want.x), tolerance);
        EXPECT_LE(rel_diff(got.rz.to(kF64), want.rz), tolerance);
        // The rows that took no step kept x and r, and start again from p = r.
        // Row 3 took no step (p · q = 0): x and r as they were, and p = r.
        EXPECT_TRUE(at::equal(got.x[3], x[3]));
        EXPECT_TRUE(at::equal(got.r[3], r[3]));
        EXPECT_TRUE(at::equal(got.p[3], got.r[3]));
      }
    }
  at::set_num_threads(threads);
}

// The symmetrized fp64 Hessian, reordered or not, from the kernel and from ATen's composition, against its formula
// evaluated with permutation matrices (exact: one nonzero term per sum): bit for bit, in both input dtypes, at sizes
// around the kernel's tiles, on 3 threads.
TEST_F(SolveTest, SymmetrizedHessianMatchesItsFormula) {
  const int threads = at::get_num_threads();
  at::set_num_threads(3);
  for (const at::ScalarType type : {at::kFloat, at::kDouble})
    for (const int64_t n : {int64_t{1}, int64_t{7}, int64_t{64}, int64_t{130}, int64_t{200}})
      for (const bool reorder : {false, true}) {
        const at::Tensor h = at::randn({n, n}, at::TensorOptions().dtype(type));  // not symmetric
        const at::Tensor order = reorder ? at::randperm(n, at::TensorOptions().dtype(at::kLong)) : at::Tensor();
        const at::Tensor perm = reorder ? at::eye(n, kF64).index_select(0, order) : at::eye(n, kF64);
        const at::Tensor permuted = at::matmul(at::matmul(perm, h.to(at::kDouble)), perm.t());
        const at::Tensor want = (permuted + permuted.t()) * 0.5;
        SCOPED_TRACE(::testing::Message() << c10::toString(type) << " n " << n << (reorder ? " reordered" : ""));
        const at::Tensor got = solve_detail::symmetrized_fp64(h, order);
        EXPECT_EQ(got.scalar_type(), at::kDouble);
        EXPECT_TRUE(at::equal(got, want));
        EXPECT_TRUE(at::equal(solve_detail::symmetrized_fp64_reference(h, order), want));
      }
  at::set_num_threads(threads);
}

// The CUDA twins of the gather and masked-pass kernels and the whole solver on CUDA give the CPU's answers.
TEST_F(SolveTest, CudaMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (at::ScalarType type : {at::kFloat, at::kDouble})
    for (bool padded : {false, true}) {
      const at::Tensor source = at::randn({300, 300}, at::TensorOptions().dtype(type));
      const auto [idx, sizes] = random_systems(40, 150, 300, padded);
      expect_gather_matches(source.to(at::kCUDA), idx.to(at::kCUDA), sizes.defined() ? sizes.to(at::kCUDA) : sizes,
                            fmt::format("cuda {} padded={}", c10::toString(type), padded));
    }
  {
    const at::Tensor l64 = at::linalg_cholesky(gram_hessian(200, 600));
    const at::Tensor kept = masks_with_extremes(40, 200);
    expect_masked_passes_match(l64, kept, at::kDouble, at::kCUDA, 1e-11);
    expect_masked_passes_match(l64, kept, at::kFloat, at::kCUDA, 1e-3);
  }
  {
    // The split-CG step on CUDA (the ATen composition) against the CPU kernel.
    const at::Tensor p = at::randn({40, 200}), r = at::randn({40, 200}), x = at::randn({40, 200}),
                     f = at::randn({40, 200}), y = at::randn({40, 200}),
                     kept = (at::rand({40, 200}) > 0.5).to(at::kFloat);
    const at::Tensor active = at::rand({40}) > 0.2;
    solve_detail::SplitCgState cpu{p.clone(), r.clone(), x.clone(), at::linalg_vecdot(r, r)};
    solve_detail::SplitCgState cuda{p.cuda(), r.cuda(), x.cuda(), at::linalg_vecdot(r, r).cuda()};
    solve_detail::split_cg_step(cpu, f, y, kept, active);
    solve_detail::split_cg_step(cuda, f.cuda(), y.cuda(), kept.cuda(), active.cuda());
    EXPECT_LE(rel_diff(cuda.p.cpu().to(kF64), cpu.p.to(kF64)), 1e-5);
    EXPECT_LE(rel_diff(cuda.x.cpu().to(kF64), cpu.x.to(kF64)), 1e-5);
    EXPECT_LE(rel_diff(cuda.rz.cpu().to(kF64), cpu.rz.to(kF64)), 1e-5);
  }
  const int64_t out = 96, n = 256;
  const at::Tensor h = gram_hessian(n, 4 * n);
  const at::Tensor w = at::randn({out, n}, kF64);
  const at::Tensor mask = variable_mask(out, n);
  for (SolvePrecision precision : {SolvePrecision::kFloat64, SolvePrecision::kFloat32Refined}) {
    RowSolveOptions options;
    options.precision = precision;
    options.memory_budget_bytes = 4 << 20;  // several chunks
    const RowSolveResult cpu = solve_rows_exact(w, mask, h, options);
    const RowSolveResult cuda = solve_rows_exact(w.to(at::kCUDA), mask.to(at::kCUDA), h.to(at::kCUDA), options);
    EXPECT_TRUE(cuda.weight.is_cuda());
    EXPECT_LE(rel_diff(cuda.weight.cpu(), cpu.weight), precision == SolvePrecision::kFloat64 ? 1e-10 : 1e-6);
    EXPECT_LE(cuda.kkt_residual, precision == SolvePrecision::kFloat64 ? 1e-8 : 1e-6);
  }
}

// The iterative solver on CUDA (ATen in place of the CPU's LAPACK and tiled kernels) reaches the closed form with
// every preconditioner, in both precisions, at 50% unstructured and 2:4, over several row chunks; and the masked
// Cholesky, which applies from kMaskedCholeskyMinInputs inputs on, is run on a layer that wide. Without a GPU it is
// skipped; OPTIMA_TEST_CUDA_ON_CPU=1 runs it on the CPU instead, to check the test itself where no GPU is (18 s here).
TEST_F(SolveTest, IterativeSolverOnCudaMatchesTheClosedForm) {
  if (!at::hasCUDA() && std::getenv("OPTIMA_TEST_CUDA_ON_CPU") == nullptr) GTEST_SKIP() << "no CUDA device";
  const c10::Device device = at::hasCUDA() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  for (const int64_t n : {int64_t{192}, int64_t{2048}}) {
    const int64_t out = n == 192 ? 40 : 24;
    const at::Tensor h = gram_hessian(n, 4 * n);
    const at::Tensor w = at::randn({out, n}, kF64);
    for (int kind = 0; kind < 2; ++kind) {
      const at::Tensor mask = kind == 0 ? matrix_threshold_mask(w, 0.5) : n_m_mask(w, 2, 4);
      const at::Tensor exact = reference(w, mask, h);
      for (IterativePreconditioner preconditioner : kEveryPreconditioner) {
        for (SolvePrecision precision : {SolvePrecision::kFloat32Refined, SolvePrecision::kFloat64}) {
          SCOPED_TRACE(fmt::format("n={} {} preconditioner {} {}", n, kind == 0 ? "unstructured 50%" : "2:4",
                                   static_cast<int>(preconditioner),
                                   precision == SolvePrecision::kFloat64 ? "fp64" : "fp32 refined"));
          RowSolveOptions options;
          options.precision = precision;
          options.preconditioner = preconditioner;
          options.memory_budget_bytes = (out / 2) * 8 * 24 * n;  // below half the rows a chunk (row_solver.h)
          const RowSolveResult r =
              solve_rows_iterative(w.to(device), mask.to(device), h.to(device), w.masked_fill(mask, 0).to(device),
                                   kTightTolerance, kDefaultQpMaxIterations, options);
          EXPECT_EQ(r.weight.device(), device);
          EXPECT_TRUE(r.converged);
          EXPECT_GE(r.chunks, 2);
          EXPECT_EQ(r.damping, 0) << "full-rank H is solved undamped";
          RowSolveResult on_cpu = r;
          on_cpu.weight = r.weight.cpu();
          expect_closed_form_answer(on_cpu, w, mask, h, exact, 1e-8);
        }
      }
    }
  }
}

}  // namespace
}  // namespace optima
