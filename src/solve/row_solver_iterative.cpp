// The iterative OPTIMA row solver: conjugate gradients on every row's kept-set system at once, preconditioned with
// the kept block of H⁻¹, for layers whose per-row systems cost more to factor than a few dozen products over all
// rows. The design is described in include/optima/solve/row_solver.h.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>

#include "masked_cholesky.h"
#include "optima/core/error.h"
#include "optima/core/resources.h"
#include "optima/solve/row_solver.h"
#include "solve_common.h"
#include "split_cg.h"

namespace optima {

namespace {

constexpr const char* kWhere = "solve_rows_iterative";
// Each inner CG run aims this far below the fp64 residual it corrects: fp32 CG stalls not far past 1e-5 of its
// right-hand side, while fp64 gets there in one round.
constexpr double kInnerReductionFp32 = 1e-4;
constexpr double kInnerReductionFp64 = 1e-12;
// An fp32 round must cut the largest relative residual at least this much, or the rest runs in fp64.
constexpr double kFp32Progress = 0.1;
// kAuto uses the pruned space only where fp64 G = H⁻¹ holds the corrections well: its relative error is about
// cond(H) · 1e-16, and the correction y − (G μ)_T cancels terms up to cond(H) times larger than itself. Real
// Hessians measured reach 1.1e7 (random OPT-125M fc2). Below kPrunedSpaceConditionMin the kept space's low-rank
// preconditioner needs fewer iterations (see IterativePreconditioner).
constexpr double kPrunedSpaceConditionMin = 1e5;
constexpr double kPrunedSpaceConditionLimit = 1e9;
// kAuto's fp32 rounds use the masked Cholesky on wide layers up to the estimate above which the iterative solver
// damps H as singular. Its fp32 passes hold far past the estimates that send other fp32 work to fp64 directly
// (predict_fp64, 1e8): the fc2 Hessians of blocks 6-11 of a random OPT-125M-shaped model on C4, estimates 1e8 to 1e11,
// converged in fp32 in 90-101 iterations with no fp64 round, 13-15 s a layer against 17-25 s in fp64 (the pruned space
// or the low rank); a round that does not pay goes to fp64 as anywhere. Nor does it need an ill-conditioned H: at
// estimates of 15 to 1e5 it took fewer iterations and less time than the low rank on every wide layer measured
// (128-window Hessians of that model, fc2 of blocks 0-2, estimates 37 / 9e4 / 1.2e5: 35 / 46 / 53 iterations, 5.3 / 7.2
// / 7.4 s, against 48 / 74 / 90, 7.4 / 9.3 / 12.4 s; a random LLaMA-7B-shaped block, 1024 rows: q_proj, estimate 15,
// 42 iterations and 14.1 s against 56 and 17.5 s; down_proj, 71, 21 and 95.9 s against 38 and 100.1 s).
constexpr double kMaskedCholeskyConditionMax = kSingularCondition;
// Only on wide layers, though: a pass's row-by-row part (tiles, diagonal blocks) and its thin products weigh more the
// narrower the layer. On opt-small's fc2 (1024 inputs, 256 rows, estimate 4e6) an fp32 iteration cost about 7
// products, and auto with it took 392-553 GEMM-equivalents against 214-299 for the exact solver (which auto had
// reached before, after giving the low rank's CG up); at 3072 inputs about 1.5. On the 768-input layers of the
// OPT-125M-shaped model (q_proj and fc1, estimate 2e3; out_proj, 2e5) it cost 1.5-2x more than the low rank.
constexpr int64_t kMaskedCholeskyMinInputs = 2048;
// choose_masked_order's probe: the rows it samples (spread over the layer; its passes took 0.10 s for 32 rows and
// 0.07 s for 8 at n = 3072, as they stream L whatever the rows) and the fp32 split-CG iterations it runs on them in
// each order (an fp64 probe misranked the orders of one of six layers after 5 iterations, of none after 10).
constexpr int64_t kOrderProbeRows = 16;
constexpr int kOrderProbeIterations = 10;
// A pruned-space round stops after 2 n + this many iterations (see CorrectionSolver::correct).
constexpr int64_t kPrunedSpaceExtraIterations = 50;
// Reliable updates of an fp32 kept-space CG (see pcg): a row's recurrence residual is replaced by its fp64 residual
// once it has fallen kReliableUpdateReduction since the row's last replacement (rows due wait for a quarter of the
// active ones, unless one has fallen kReliableUpdateUrgent or grown kGrowthDue-fold); a row whose true residual is
// more than kDriftRestart off its recurrence restarts its search direction; one whose true residual did not fall
// below kStalledProgress of the last one's is one fp32 cannot carry. A row whose recurrence has not fallen that far
// in n iterations since its last replacement (CG on at most n unknowns would be done in exact arithmetic) is due too,
// and is judged stalled the same way: one row of opt-small's q_proj (n = 256) went 1300 fp32 iterations so, alone
// in the batch, before the rule.
constexpr double kReliableUpdateReduction = 1e-3;
constexpr double kReliableUpdateUrgent = 1e-5;
constexpr double kGrowthDue = 10;
constexpr double kDriftRestart = 0.1;
constexpr double kStalledProgress = 0.5;
// The first iteration at which a CG run projects whether it will converge within options.abandon_iterations.
constexpr int64_t kAbandonFirstCheck = 16;
// The same for the masked Cholesky's split CG, whose early projections are pessimistic instead: its operator
// I + B Bᵀ has a few dozen large eigenvalues (32-47 above 10 on fc2), which CG takes about one iteration each to
// remove before its residual falls in earnest. From 16 iterations, fc2 of block 7 of the 128-window OPT-125M-shaped
// Hessians projected past the break-even (185) and went to the exact solver (21-23 s), where the CG converges in
// 90-94 iterations (12-16 s).
constexpr int64_t kAbandonFirstCheckSplit = 40;
constexpr int64_t kAbandonCheckEvery = 4;
// How often the pruned-space CG measures the kept-set residual its iterate leaves (an extra product each time).
constexpr int64_t kMapCheckEvery = 4;
// The batch is compacted to the rows still iterating once they are at most this fraction of it: gathering the
// state costs a few row-sized copies, the products it saves are n times larger.
constexpr double kCompactBelow = 0.95;
// The low-rank preconditioner: rank n / kLowRankDivisor within [kLowRankMin, kLowRankMax]; subspace-iteration steps;
// the Nyström core's relative shift (keeps its Cholesky defined when Ĥ has fewer than k strong directions); the
// floor on Δ (unit-diagonal scale), which keeps the model definite where a feature is almost all low-rank; the
// memory bound of the per-row setup; the seed of its random start.
constexpr int64_t kLowRankDivisor = 24;
constexpr int64_t kLowRankMin = 32;
constexpr int64_t kLowRankMax = 128;
constexpr int kSubspaceSteps = 2;
constexpr double kNystromShift = 1e-10;
constexpr double kDeltaFloor = 1e-3;
constexpr int64_t kSetupBytes = int64_t{256} << 20;
constexpr uint64_t kLowRankSeed = 0x5eed;

struct CgState {
  int64_t iterations = 0;
  double flops = 0;
  IterativeWork work;
  int64_t abandon_at = 0;  // options.abandon_iterations (0: never)
  bool abandoned = false;
};

// Whether CG should be given up: past its iteration limit, or projected past it by the live rows' fall since the
// start (log-linear in the iterations, the slowest row counting), checked every kAbandonCheckEvery iterations from
// kAbandonFirstCheck on. CG falls fastest in its first iterations, so early projections are optimistic: on
// OPT-125M's out_proj (over 1000 iterations) the projection from 16 iterations said 64.
bool should_abandon(const CgState& state, int64_t it, const at::Tensor& r, const at::Tensor& rnorm_start,
                    const at::Tensor& target, const at::Tensor& active, bool split) {
  if (state.abandon_at <= 0) return false;
  if (state.iterations >= state.abandon_at) return true;
  if (it < (split ? kAbandonFirstCheckSplit : kAbandonFirstCheck) || it % kAbandonCheckEvery != 0) return false;
  // Only now the norms: on the other iterations this check costs nothing.
  const at::Tensor rnorm = at::linalg_vector_norm(r, 2, {1});
  const at::Tensor fallen = at::log(rnorm.to(at::kDouble) / rnorm_start.to(at::kDouble));
  const at::Tensor needed = at::log(target.to(at::kDouble) / rnorm_start.to(at::kDouble));
  // Rows that have not fallen at all project to forever.
  const at::Tensor projected = at::where(fallen < 0, needed / fallen * static_cast<double>(it),
                                         at::full_like(fallen, std::numeric_limits<double>::infinity()));
  const double worst = at::where(active, projected, at::zeros_like(projected)).max().item<double>();
  return static_cast<double>(state.iterations - it) + worst > static_cast<double>(state.abandon_at);
}

// The matrix the rows solve with, in the inputs' order `order`: a layer that runs the masked Cholesky is solved with
// its inputs in that preconditioner's order (choose_masked_order) from start to end, its weights and masks permuted
// on the way in and out (solve_rows_iterative), so that H is prepared and factored once, in that order.
struct System {
  at::Tensor h;      // fp64: undamped H unless it is singular
  at::Tensor l;      // its Cholesky factor
  at::Tensor order;  // the inputs' order of h and l; undefined: as given
  double damping = 0;
  double condition = 0;  // cholesky_condition_estimate(l)
  int64_t retries = 0;
  double mean_diag = 0;  // of the prepared H (solve_detail::PreparedHessian)
  int64_t dead_inputs = 0;
  bool order_by_pruned_share = false;  // choose_masked_order kept by_pruned_share's order
  double extra_factor_flops = 0;       // choose_masked_order's second factorization
  double probe_flops = 0;              // and its probe's passes and products
};

// The masked Cholesky leaves out L_TS L_TSᵀ, and L_TS only holds entries of pruned inputs ordered before kept ones
// (L is lower triangular), so the order of the inputs decides how good a preconditioner L_TT L_TTᵀ is. One order
// serves every row. Two are candidates, and choose_masked_order keeps whichever a probe finds converging faster:
// - by_pruned_share: increasing p_j, the share of rows pruning input j (inputs pruned in the fewest rows first);
// - by_correlation: increasing p_j c_j, where c_j = Σ_t H_tj² / (H_jj H_tt) − 1, input j's squared correlations with
//   the others. An early pruned input j leaves out its column of L, H_:j / √H_jj before the Schur updates: how much
//   grows with how often it is pruned and how much of the other inputs it explains. Often-kept or nearly independent
//   inputs go first, often-pruned and correlated ones last.
// Neither wins everywhere (fp64 split CG on 16 rows, SparseGPT's masks and start, scripts/study_split_cg.py --study
// order): on fc2 of a random OPT-125M-shaped model at 128 x 2048 C4 tokens by_correlation took 25.4 / 26.5 iterations
// on blocks 3 / 9 against 35.3 / 38.6 (2:4, block 3: 24.9 against 32.5); on the trained opt-small it took more, 49.7
// against 41.3 on fc2 of block 3 and 12-15% more on block 1's q_proj, out_proj and fc1. The kept space's system is
// solved in the chosen order (a layer that plans the masked Cholesky is posed in it from the start, see System; one
// that turns to it later has CorrectionSolver permute H, the masks, residuals and corrections, by_correlation).
at::Tensor by_pruned_share(const at::Tensor& pruned) {
  return at::argsort(pruned.to(at::kFloat).sum(0), /*stable=*/true);
}

at::Tensor by_correlation(const at::Tensor& pruned, const at::Tensor& hessian) {
  const at::Tensor h = hessian.scalar_type() == at::kDouble ? hessian : hessian.to(at::kFloat);
  const at::Tensor diagonal = h.diagonal();
  // A dead input (H_jj = 0, a zero row and column) explains nothing: c_j = 0.
  const at::Tensor inverse = at::where(diagonal > 0, diagonal.reciprocal(), at::zeros_like(diagonal));
  const at::Tensor correlation = (at::mv(h.square(), inverse) * inverse - 1).clamp_min(0);
  const at::Tensor pruned_share = pruned.to(correlation.scalar_type()).mean(0);
  return at::argsort(pruned_share * correlation, /*stable=*/true);
}

// H with its rows and columns in the given order, in one gather: selecting the rows and then the columns took twice as
// long (0.12 s against 0.06 s at n = 3072 in fp64, the column gather reading across rows).
at::Tensor permute_symmetric(const at::Tensor& h, const at::Tensor& order) {
  return at::index(h, {order.unsqueeze(1), order.unsqueeze(0)});
}

// The Cholesky factor of `h` and its condition estimate (infinite where h is not positive definite).
std::pair<at::Tensor, double> factor_with_condition(const at::Tensor& h) {
  auto [l, ok] = solve_detail::cholesky_factor(h);
  return {l, ok ? cholesky_condition_estimate(l) : std::numeric_limits<double>::infinity()};
}

// Whether this preconditioner setting means the masked Cholesky for `system`: asked for by name, or kAuto's choice
// for its fp32 rounds (auto_uses_masked_cholesky).
bool masked_cholesky_for(IterativePreconditioner kind, const System& system) {
  return kind == IterativePreconditioner::kMaskedCholesky ||
         (kind == IterativePreconditioner::kAuto && auto_uses_masked_cholesky(system.condition, system.h.size(0)));
}

// Whether the layer's fp32 rounds will run the masked Cholesky whatever H's condition short of singular: asked for
// by name, or kAuto's choice (auto_uses_masked_cholesky) even at the largest estimate that is not singular.
bool plans_masked_cholesky(const RowSolveOptions& options, int64_t inputs) {
  return options.preconditioner == IterativePreconditioner::kMaskedCholesky ||
         (options.preconditioner == IterativePreconditioner::kAuto &&
          options.precision == SolvePrecision::kFloat32Refined &&
          auto_uses_masked_cholesky(kSingularCondition, inputs));
}

// H prepared (solve_detail::prepare_hessian), its Cholesky factor and condition estimate, damped where H is singular.
// A layer that will run the masked Cholesky is prepared and factored in that preconditioner's input order
// (by_correlation, then choose_masked_order) straight away, and its condition estimated from that factor: preparing
// H in the given order, then reordering and factoring it, took 0.45-0.51 s a layer at OPT-125M's fc2 (n = 3072), this
// 0.28-0.33 s. The estimate is a lower bound on cond(H) in either order. A singular H (or one the reordered
// factorization finds so) takes the given order, as before.
System prepare_system(const at::Tensor& hessian, const at::Tensor& pruned, const RowSolveOptions& options) {
  System s;
  const auto take = [&s](const solve_detail::PreparedHessian& prepared) {
    s.h = prepared.h;
    s.mean_diag = prepared.mean_diag;
    s.dead_inputs = prepared.dead_inputs;
  };
  if (plans_masked_cholesky(options, hessian.size(0))) {
    at::Tensor order = by_correlation(pruned, hessian);
    take(solve_detail::prepare_hessian(kWhere, hessian, order));
    std::tie(s.l, s.condition) = factor_with_condition(s.h);
    if (s.condition <= kSingularCondition) {
      s.order = std::move(order);
      return s;
    }
  }
  take(solve_detail::prepare_hessian(kWhere, hessian));
  std::tie(s.l, s.condition) = factor_with_condition(s.h);
  if (s.condition <= kSingularCondition) return s;
  // Singular (or nearly so): the damped problem, as the exact solver solves it.
  const at::Tensor undamped = s.h;
  double damping = options.damp * s.mean_diag;
  for (int attempt = 0;; ++attempt) {
    at::Tensor h = undamped.clone();
    h.diagonal().add_(damping);
    auto [ld, ok] = solve_detail::cholesky_factor(h);
    if (ok) {
      s.h = h;
      s.l = ld;
      s.damping = damping;
      s.condition = cholesky_condition_estimate(ld);
      s.retries = attempt;
      return s;
    }
    damping = solve_detail::next_retry_damping(kWhere, damping, attempt, options.max_damping_retries, s.mean_diag);
  }
}

// A preconditioner for every row's kept-set system at once: z = M_r⁻¹ r for r [rows, n] supported on each row's
// kept set. Holds per-row state, which follows the rows when the batch is compacted.
class Preconditioner {
 public:
  // G_TT: the kept block of G = H⁻¹ (g [n, n]); one product per application.
  Preconditioner() = default;
  static Preconditioner inverse_block(at::Tensor g) {
    Preconditioner p;
    p.g_ = std::move(g);
    return p;
  }
  // Woodbury on the low-rank-plus-diagonal model of H (see low_rank below); a few thin products per application.
  static Preconditioner low_rank(const at::Tensor& scale, at::Tensor u, const at::Tensor& inv_delta, at::Tensor k_inv) {
    Preconditioner p;
    p.u_ = std::move(u);
    p.scaled_inv_delta_ = scale * inv_delta;
    p.outer_scale_ = scale * scale * inv_delta;
    p.k_inv_ = std::move(k_inv);
    return p;
  }
  // diag(M)⁻¹ restricted to the row's active set (inv_diag [n]).
  static Preconditioner jacobi(at::Tensor inv_diag) {
    Preconditioner p;
    p.inv_diag_ = std::move(inv_diag);
    return p;
  }
  // L_TT L_TTᵀ, with L H's Cholesky factor restricted to each row's kept set (masked_cholesky.h), applied as a split
  // preconditioner: CG runs on C⁻¹ H_TT C⁻ᵀ = I + B Bᵀ (C = L_TT, B = C⁻¹ L_TS) with residuals C⁻¹ r, and the two
  // passes that apply that operator are all an iteration costs (see split_passes): no product with H.
  static Preconditioner masked_cholesky(at::Tensor l) {
    Preconditioner p;
    p.l_ = std::move(l);
    return p;
  }
  bool split() const { return l_.defined(); }
  // Split form: C⁻¹ r for r [rows, n] supported on each row's kept set.
  at::Tensor to_split(const at::Tensor& r, const at::Tensor& kept) const {
    return solve_detail::masked_forward(l_, r, at::Tensor(), kept);
  }
  // Split form: the two passes of (I + B Bᵀ) p, f and C⁻ᵀ p = y, the step in the original unknowns; (I + B Bᵀ) p is
  // p − kept ∘ f, which split_cg_step forms on the way. The backward pass solves C ᵀ y = p and yields L_TSᵀ y on the
  // pruned entries on the way; the forward pass, with those held on the pruned entries, gives f = −C⁻¹ L_TS (L_TSᵀ y)
  // on the kept ones.
  std::pair<at::Tensor, at::Tensor> split_passes(const at::Tensor& p, const at::Tensor& kept) const {
    at::Tensor sums;
    at::Tensor y = solve_detail::masked_backward(l_, p, kept, &sums);
    at::Tensor f = solve_detail::masked_forward(l_, at::Tensor(), sums, kept);
    return {std::move(f), std::move(y)};
  }
  // Flops of one application to `rows` rows (split form: of split_passes, two passes over L's lower half).
  double flops(int64_t rows, int64_t n) const {
    const double r = static_cast<double>(rows), fn = static_cast<double>(n);
    if (inv_diag_.defined()) return 2.0 * r * fn;
    if (l_.defined()) return 2.0 * r * fn * fn;
    if (g_.defined()) return 2.0 * r * fn * fn;
    const double k = static_cast<double>(u_.size(1));
    return 4.0 * r * fn * k + 2.0 * r * k * k;
  }
  // r is supported on each row's active set (CG keeps it there), which the products below rely on. `rows`: which of
  // the rows the preconditioner holds state for r's rows are (undefined: all of them, in order).
  at::Tensor apply(const at::Tensor& r, const at::Tensor& kept, const at::Tensor& rows = at::Tensor()) const {
    // Split: CG runs on the preconditioned system itself. A copy, as pcg updates z in place.
    if (l_.defined()) return r.clone();
    if (inv_diag_.defined()) return r * inv_diag_ * kept;
    if (g_.defined()) return at::matmul(r, g_).mul_(kept);
    // M_T = S⁻¹ (Δ_T + U_T U_Tᵀ) S⁻¹ with S = diag(H)^(-1/2); M_T⁻¹ = S (Δ⁻¹ − Δ⁻¹ U_T K⁻¹ U_Tᵀ Δ⁻¹) S with
    // K = I + U_Tᵀ Δ_T⁻¹ U_T (per row, inverted at setup). K⁻¹ is symmetric, so it multiplies c as a row vector:
    // that batched product runs 2-3x faster than the column form on CPU. The rest is two passes over [rows, n].
    const at::Tensor k_inv = rows.defined() ? k_inv_.index_select(0, rows) : k_inv_;
    const at::Tensor c = at::bmm(at::matmul(r * scaled_inv_delta_, u_).unsqueeze(1), k_inv).squeeze(1);
    at::Tensor z = at::matmul(c, u_.t());
    z.mul_(scaled_inv_delta_).mul_(kept).mul_(-1.0);
    return z.addcmul_(r, outer_scale_);
  }
  void select(const at::Tensor& keep) {
    if (k_inv_.defined()) k_inv_ = k_inv_.index_select(0, keep);
  }

 private:
  at::Tensor inv_diag_;
  at::Tensor g_;
  at::Tensor l_;  // masked Cholesky: H's factor in the working precision
  // The low-rank model: U, S Δ⁻¹ and S² Δ⁻¹ (S = diag(H)^(-1/2)), and every row's K⁻¹.
  at::Tensor u_, scaled_inv_delta_, outer_scale_, k_inv_;
};

// The rows choose_masked_order probes, in the inputs' own order: their masks, and the fp64 residuals
// (H (w − start))_T and norms |(H w)_T| the probes measure against (the same whatever the order).
struct ProbeRows {
  at::Tensor pruned, residual, scale;
};

// How far kOrderProbeIterations of the fp32 split CG take the probe rows on the system (h, l) whose inputs are in
// `order`: the mean log of their relative fp64 residuals afterwards, lower being better. The solver's own passes and
// step, so the probe sees what fp32 does with the order.
double probe_masked_order(const at::Tensor& h, const at::Tensor& l, const at::Tensor& order, const ProbeRows& rows) {
  const at::Tensor kept64 = rows.pruned.index_select(1, order).logical_not().to(at::kDouble);
  const at::Tensor kept32 = kept64.to(at::kFloat);
  const at::Tensor residual = rows.residual.index_select(1, order);
  const Preconditioner prec = Preconditioner::masked_cholesky(l.to(at::kFloat).contiguous());
  solve_detail::SplitCgState cg;
  cg.r = prec.to_split(residual.to(at::kFloat), kept32).contiguous();
  cg.x = at::zeros_like(cg.r);
  cg.p = cg.r.clone();
  cg.rz = at::linalg_vecdot(cg.r, cg.r);
  const at::Tensor active = at::ones({cg.r.size(0)}, kept64.options().dtype(at::kBool));
  for (int it = 0; it < kOrderProbeIterations; ++it) {
    const auto [f, y] = prec.split_passes(cg.p, kept32);
    solve_detail::split_cg_step(cg, f, y, kept32, active);
  }
  const at::Tensor left = residual - at::matmul(cg.x.to(at::kDouble) * kept64, h) * kept64;
  // A row the probe solves exactly (or with nothing to solve) counts as e^-690, not −∞.
  return at::log(at::linalg_vector_norm(left, 2, {1}) / rows.scale).clamp_min(-690.0).mean().item<double>();
}

// The masked Cholesky's input order for a system prepare_system posed in by_correlation's: by_pruned_share's instead
// where a probe of kOrderProbeRows rows converges further in it (see by_pruned_share). An fp64 version of the probe
// (8 rows) ranked the two orders as their whole solves do after 10 iterations on the six 50% layers of that
// comment (OPT fc2 of blocks 3 and 9, the four opt-small layers); after 5 it misranked fc2 of block 9. Cost, on fc2 of
// the 128-window Hessians of the random OPT-125M-shaped model (768 x 3072, block 9): 0.05 s to reorder H, 0.14 s for
// the second factor, 0.15 s for each probe (its passes stream L whatever the rows), 0.48 s in all, about 6.5 products
// [768, 3072] x [3072, 3072], and relatively less on layers with more rows; it kept by_correlation there (mean log
// residual −10.5 against −9.2 by_pruned_share).
void choose_masked_order(System& system, const at::Tensor& weight, const at::Tensor& pruned, const at::Tensor& start) {
  const int64_t rows = weight.size(0);
  const at::Tensor other = by_pruned_share(pruned);
  if (rows == 0 || at::equal(other, system.order)) return;
  // H in the other order, from the prepared one: position in system.order of each input of `other`.
  const at::Tensor back = at::argsort(system.order);
  at::Tensor h = permute_symmetric(system.h, back.index_select(0, other));
  auto [l, condition] = factor_with_condition(h);
  const double n = static_cast<double>(h.size(0));
  system.extra_factor_flops = n * n * n / 3;
  if (!(condition <= kSingularCondition)) return;  // not definite in that order (infinite), or nearly singular
  // Spread over the layer; at least one apart, so distinct.
  const at::Tensor sample = at::linspace(0, static_cast<double>(rows - 1), std::min(rows, kOrderProbeRows),
                                         weight.options().dtype(at::kDouble))
                                .round()
                                .to(at::kLong);
  ProbeRows probe;
  probe.pruned = pruned.index_select(0, sample);
  // The residuals and norms in the system's order (its H), then back to the inputs' own.
  const at::Tensor w_ordered = weight.index_select(0, sample).index_select(1, system.order).to(at::kDouble);
  const at::Tensor kept_ordered = probe.pruned.index_select(1, system.order).logical_not().to(at::kDouble);
  const at::Tensor start_ordered =
      start.index_select(0, sample).index_select(1, system.order).to(at::kDouble) * kept_ordered;
  probe.scale = at::linalg_vector_norm(at::matmul(w_ordered, system.h) * kept_ordered, 2, {1}).clamp_min(1e-300);
  probe.residual = (at::matmul(w_ordered - start_ordered, system.h) * kept_ordered).index_select(1, back);
  // Two products with H of the probe rows for their residuals and norms, one per order at the end, and the passes.
  system.probe_flops =
      (4 * 2.0 * n * n + 2 * (2 * kOrderProbeIterations + 1) * n * n) * static_cast<double>(sample.size(0));
  if (probe_masked_order(h, l, other, probe) < probe_masked_order(system.h, system.l, system.order, probe)) {
    system.h = std::move(h);
    system.l = std::move(l);
    system.order = other;
    system.condition = condition;
    system.order_by_pruned_share = true;
  }
}

// The rank of the low-rank model: enough to capture the few strongly correlated directions of an LLM layer's
// inputs (outlier features, shared factors), small enough that its per-row setup, K_r [k, k], costs a fraction of
// one product over the rows (rows·n·k² against rows·n²).
int64_t low_rank_size(int64_t n) {
  return std::clamp<int64_t>(n / kLowRankDivisor, std::min<int64_t>(n, kLowRankMin), kLowRankMax);
}

// K_r = I + Σ_{i in T_r} v_i v_iᵀ for every row r (v [n, k], kept [rows, n] bool), in fp64: one product of the kept
// masks with the outer products v_i v_iᵀ, [rows, n] x [n, k²], at the machine's product rate. A batched product per
// row chunk (masked copies of v) took 4x longer and a tenth of the whole solve on OPT-125M's fc2. Blocks of K's rows
// bound the memory of the outer products; each block covers its columns from the diagonal on, and the mirror fills
// the rest (K is symmetric), which halves the work.
at::Tensor row_woodbury_cores(const at::Tensor& v, const at::Tensor& kept, int64_t setup_bytes, double& flops) {
  const int64_t n = v.size(0), k = v.size(1), rows = kept.size(0);
  const at::Tensor masks = kept.to(at::kDouble);
  at::Tensor cores = at::zeros({rows, k, k}, v.options());
  const int64_t block = std::clamp<int64_t>(std::min(kSetupBytes, setup_bytes) / (8 * n * k), 1, k);
  for (int64_t begin = 0; begin < k; begin += block) {
    const int64_t count = std::min(block, k - begin), width = k - begin;
    const at::Tensor outer = (v.narrow(1, begin, count).unsqueeze(2) * v.narrow(1, begin, width).unsqueeze(1));
    const at::Tensor part = at::matmul(masks, outer.reshape({n, count * width})).view({rows, count, width});
    cores.narrow(1, begin, count).narrow(2, begin, width).copy_(part);
    // The block's entries below the diagonal, mirrored into the columns the earlier blocks left empty.
    if (width > count)
      cores.narrow(1, begin + count, width - count)
          .narrow(2, begin, count)
          .copy_(part.narrow(2, count, width - count).transpose(1, 2));
    flops += 2.0 * static_cast<double>(rows * n * count * width);
  }
  cores.diagonal(0, 1, 2).add_(1.0);
  return cores;
}

// The low-rank-plus-diagonal preconditioner. With S = diag(H)^(-1/2), the unit-diagonal Ĥ = S H S is approximated by
// Nyström, Ĥ ≈ U Uᵀ from k directions found by two steps of subspace iteration (Ĥ − U Uᵀ is positive
// semi-definite), and Δ = diag(Ĥ − U Uᵀ) (floored) completes the diagonal. Restricting Δ + U Uᵀ to a row's kept
// set is Δ_T + U_T U_Tᵀ, whose inverse Woodbury gives through the row's K = I + U_Tᵀ Δ_T⁻¹ U_T alone.
Preconditioner low_rank_preconditioner(const at::Tensor& h, const at::Tensor& kept, at::ScalarType work,
                                       int64_t setup_bytes, double& flops) {
  const int64_t n = h.size(0), k = low_rank_size(n);
  const double fn = static_cast<double>(n), fk = static_cast<double>(k), rows = static_cast<double>(kept.size(0));
  const at::Tensor scale = h.diagonal().rsqrt();
  const at::Tensor hs = h * scale.unsqueeze(0) * scale.unsqueeze(1);
  // A fixed seed: the same layer gets the same preconditioner, and the run's own random stream is left alone.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(kLowRankSeed);
  at::Tensor omega = at::randn({n, k}, gen, at::TensorOptions().dtype(at::kDouble)).to(h.device());
  for (int step = 0; step < kSubspaceSteps; ++step) omega = std::get<0>(at::linalg_qr(at::matmul(hs, omega)));
  const at::Tensor y = at::matmul(hs, omega);
  at::Tensor core = at::matmul(omega.t(), y);
  core = (core + core.t()) * 0.5;
  core.diagonal().add_(kNystromShift * core.diagonal().mean().item<double>());
  const at::Tensor lc = at::linalg_cholesky(core);
  // U = Y L⁻ᵀ, so that U Uᵀ = Y C⁻¹ Yᵀ.
  const at::Tensor u = at::linalg_solve_triangular(lc, y.t(), /*upper=*/false).t().contiguous();
  const at::Tensor delta = (1.0 - (u * u).sum(1)).clamp_min(kDeltaFloor);
  const at::Tensor inv_delta = 1.0 / delta;
  flops += 2.0 * fn * fn * fk * (kSubspaceSteps + 1);
  const at::Tensor k_inv =
      at::linalg_inv(row_woodbury_cores(u * inv_delta.sqrt().unsqueeze(1), kept, setup_bytes, flops));
  flops += rows * fk * fk * fk;
  return Preconditioner::low_rank(scale.to(work), u.to(work), inv_delta.to(work), k_inv.to(work));
}

// What pcg's stopping rule measures when it is not the CG residual r itself: |(r · matrix) ∘ mask| per row, checked
// every kMapCheckEvery iterations (one more product each time).
struct ResidualMap {
  at::Tensor matrix, mask;
};

// The fp64 system behind an fp32 CG, for reliable updates: H, the starting residual [rows, n], the offset [rows, n]
// whose (H (offset − e))_T is the true residual of e, and the active set. The starting residual may come from an fp32
// product (solve_chunk): the CG only starts from it and measures it; every residual it replaces or reports is
// computed from the offset in fp64.
struct Fp64System {
  at::Tensor h, rhs, offset, mask;
};

// What an fp32 CG with reliable updates knows at its end of the fp64 residual (H (offset − e))_T of the e it returns:
// `residual` [rows, n] holds it for the rows whose `known` is set, those replaced at least once and whose last
// replacement came after their last step (every row a split CG confirmed). The caller need not compute those again: at
// OPT-125M's fc2 that residual is an fp64 product over all rows, 0.17 s of a 7 s layer.
struct KnownResidual {
  at::Tensor residual, known;
};

// Preconditioned CG for (H e)_T = rhs_T with e_S = 0, every row at once, in rhs's dtype (any symmetric positive
// definite matrix and any per-row active set: the pruned-space formulation runs it on G with the pruned set; a split
// preconditioner applies the matrix itself, and h is then not used and may be undefined). Starts
// from e = 0 and stops when each row's residual norm is at most target[r] or the iteration budget runs out. Converged
// rows leave the batch; their e is final.
// With `fp64` (an fp32 CG), e is accumulated in fp64 and each row's recurrence residual, which drifts from the true
// one in fp32, is replaced by its fp64 residual once it has fallen by kReliableUpdateReduction since the last
// replacement, and before the CG stops; the search directions are kept (reliable updates, as in mixed-precision
// lattice QCD solvers). A row fp32 cannot carry stops the run (see replace_residuals). Restarting CG from the fp64
// residual instead, as refinement rounds do, threw away the Krylov space each time: 159-163 iterations on OPT-125M's
// fc2 against 132 in fp64 (145-159 with reliable updates).
at::Tensor pcg(const at::Tensor& h, Preconditioner prec, const at::Tensor& rhs, const at::Tensor& kept,
               const at::Tensor& target, int64_t budget, CgState& state, const ResidualMap& map = {},
               const Fp64System* fp64 = nullptr, KnownResidual* known = nullptr) {
  const SteadyClock::time_point started = SteadyClock::now();
  const int64_t n = rhs.size(1);
  const double fn = static_cast<double>(n);
  at::Tensor e = at::zeros_like(rhs);
  at::Tensor e64 = fp64 != nullptr ? at::zeros_like(fp64->rhs) : at::Tensor();  // e up to the last replacement
  // The fp64 residual of e64 (that of e64 = 0 to begin with): for the caller (KnownResidual), and for rows that go back
  // to their last replaced point.
  at::Tensor residual64 = fp64 != nullptr ? fp64->rhs.clone() : at::Tensor();
  // The rows whose residual64 was computed in fp64 (of the others it holds the starting residual as given).
  at::Tensor replaced = fp64 != nullptr ? at::zeros({rhs.size(0)}, rhs.options().dtype(at::kBool)) : at::Tensor();
  // The rows still iterating (indices into the batch) and their state.
  at::Tensor rows = at::arange(rhs.size(0), rhs.options().dtype(at::kLong));
  // A split preconditioner (masked Cholesky) runs CG on C⁻¹ H_TT C⁻ᵀ: r, p and the targets t are then in its
  // space (t scaled by each row's |C⁻¹ r| / |r| at its last fp64 residual), x in the original unknowns.
  const bool split = prec.split();
  TORCH_CHECK(!split || fp64 != nullptr, "pcg: a split preconditioner needs the fp64 system");
  at::Tensor x = at::zeros_like(rhs), r = split ? prec.to_split(rhs, kept) : rhs.clone(), m = kept, t = target;
  // Split: the targets of the true residuals; |C⁻¹ r| at the replacements; rows whose true residual met its target
  // at their last replacement.
  at::Tensor t_true, rnorm_split_replaced, confirmed;
  if (split) {
    confirmed = at::zeros({r.size(0)}, r.options().dtype(at::kBool));
    t_true = target;
    rnorm_split_replaced = at::linalg_vector_norm(r, 2, {1}).to(at::kDouble);
    t = (target.to(at::kDouble) * rnorm_split_replaced /
         at::linalg_vector_norm(fp64->rhs, 2, {1}).clamp_min(std::numeric_limits<double>::min()))
            .to(r.scalar_type());
    state.flops += fn * fn * static_cast<double>(r.size(0));
  }
  at::Tensor z = prec.apply(r, m);
  state.flops += split ? 0.0 : prec.flops(r.size(0), n);
  at::Tensor p = z.clone();
  at::Tensor rz = at::linalg_vecdot(r, z);
  int64_t live = r.size(0);
  at::Tensor map_mask = map.mask;
  at::Tensor active;
  at::Tensor rnorm_replaced =
      fp64 != nullptr ? at::linalg_vector_norm(fp64->rhs, 2, {1}) : at::Tensor();  // the true norms, fp64
  at::Tensor rnorm_start = state.abandon_at > 0 ? at::linalg_vector_norm(r, 2, {1}) : at::Tensor();
  // Rows whose last replacement found them diverged (reliable updates).
  at::Tensor diverged = fp64 != nullptr ? at::zeros({live}, rows.options().dtype(at::kBool)) : at::Tensor();
  // The iteration of each live row's last replacement (its start to begin with).
  at::Tensor segment_start = fp64 != nullptr ? at::zeros({live}, rows.options()) : at::Tensor();
  // The fp64 residual (H (offset − e))_T of the batch's rows `which` at their e [which, n].
  const auto fp64_residual = [&](const at::Tensor& which, const at::Tensor& e_rows) {
    return at::matmul(fp64->offset.index_select(0, which) - e_rows, fp64->h) * fp64->mask.index_select(0, which);
  };
  // The fp64 residual of the live rows `due` (local indices) becomes their r: their x moves into e64 and their
  // search directions stay (unless they restart, below). `stale` (bool over `due`): the rows due because they went n
  // iterations without their recurrence falling. Returns whether the run should stop.
  const auto replace_residuals = [&](const at::Tensor& due, const at::Tensor& stale) -> bool {
    const at::Tensor batch_rows = rows.index_select(0, due);
    const at::Tensor old_e = e64.index_select(0, batch_rows);
    const at::Tensor m_due = m.index_select(0, due);
    // What the recurrence tracks, for a true residual: itself, or C⁻¹ of it (split).
    const auto to_tracked = [&](const at::Tensor& residual, const at::Tensor& mask) {
      const at::Tensor work = residual.to(r.scalar_type());
      state.flops += split ? fn * fn * static_cast<double>(residual.size(0)) : 0.0;
      return split ? prec.to_split(work, mask) : work;
    };
    const at::Tensor candidate = old_e + x.index_select(0, due).to(at::kDouble);
    at::Tensor true_residual = fp64_residual(batch_rows, candidate);
    at::Tensor true_norm = at::linalg_vector_norm(true_residual, 2, {1});
    at::Tensor fresh;
    if (split) {
      // A split CG's rows whose true residual met its target are done: their tracked residual becomes 0 (met, and
      // never worse than before) without the forward pass C⁻¹ r, which these confirmations would otherwise pay for
      // rows that leave the batch (about 40% of the replacements on OPT-125M's fc2).
      const at::Tensor open = (true_norm > t_true.index_select(0, due).to(at::kDouble)).nonzero().squeeze(1);
      fresh = at::zeros(true_residual.sizes(), r.options());
      if (open.numel() > 0)
        fresh.index_copy_(0, open, to_tracked(true_residual.index_select(0, open), m_due.index_select(0, open)));
    } else {
      fresh = to_tracked(true_residual, m_due);
    }
    at::Tensor tracked_norm = split ? at::linalg_vector_norm(fresh, 2, {1}).to(at::kDouble) : true_norm;
    at::Tensor& tracked_replaced = split ? rnorm_split_replaced : rnorm_replaced;
    const at::Tensor before = tracked_replaced.index_select(0, due);
    // A row whose CG diverged (the norm its recurrence tracks grew, measured on the true residual: the search
    // directions kept across replacements can lose conjugacy in fp32 on ill-conditioned rows, as on opt-small's
    // q_proj) goes back to its last replaced point and restarts from there; one that diverges twice, or that did not
    // at least halve that norm while its recurrence fell a thousandfold, is one fp32 cannot carry: the run stops and
    // the caller measures the layer's progress (and goes to fp64 if it is too slow). A split CG is judged on C⁻¹ r,
    // what it minimizes: |r| itself may grow on the way where C's scales spread.
    const at::Tensor worse = tracked_norm > before;
    const at::Tensor diverged_again = worse & diverged.index_select(0, due);
    const at::Tensor recurrence = r.index_select(0, due);
    const at::Tensor recurrence_fall = at::linalg_vector_norm(recurrence, 2, {1}).to(at::kDouble) / before;
    const at::Tensor stalled = worse.logical_not() & (tracked_norm > kStalledProgress * before) &
                               (split ? (recurrence_fall <= kReliableUpdateReduction) | stale : at::ones_like(worse));
    const bool stop = diverged_again.any().item<bool>() || stalled.any().item<bool>();
    const at::Tensor accepted_e = at::where(worse.unsqueeze(1), old_e, candidate);
    if (worse.any().item<bool>()) {
      // Those rows go back to their last replaced point, whose residual is on record.
      const at::Tensor back = worse.nonzero().squeeze(1);
      const at::Tensor back_rows = batch_rows.index_select(0, back);
      at::Tensor old_residual = residual64.index_select(0, back_rows);
      // A row never replaced has only its starting residual on record, which may be an fp32 estimate (solve_chunk):
      // its true residual (at e64, 0) is computed, or the row would restart from the estimate's error.
      const at::Tensor unrecorded = replaced.index_select(0, back_rows).logical_not().nonzero().squeeze(1);
      if (unrecorded.numel() > 0) {
        const at::Tensor start_rows = back_rows.index_select(0, unrecorded);
        old_residual.index_copy_(0, unrecorded, fp64_residual(start_rows, e64.index_select(0, start_rows)));
        state.flops += 2.0 * fn * fn * static_cast<double>(unrecorded.numel());
      }
      true_residual.index_copy_(0, back, old_residual);
      true_norm.index_copy_(0, back, at::linalg_vector_norm(old_residual, 2, {1}));
      if (split) {
        fresh.index_copy_(0, back, prec.to_split(old_residual.to(r.scalar_type()), m_due.index_select(0, back)));
        tracked_norm = at::linalg_vector_norm(fresh, 2, {1}).to(at::kDouble);
        state.flops += fn * fn * static_cast<double>(back.size(0));
      } else {
        fresh.index_copy_(0, back, old_residual.to(r.scalar_type()));
        tracked_norm = true_norm;
      }
    }
    e64.index_copy_(0, batch_rows, accepted_e);
    residual64.index_copy_(0, batch_rows, true_residual);
    replaced.index_fill_(0, batch_rows, true);
    x.index_fill_(0, due, 0.0);
    diverged.index_copy_(0, due, worse);
    r.index_copy_(0, due, fresh);
    rnorm_replaced.index_copy_(0, due, true_norm);
    if (split) {
      rnorm_split_replaced.index_copy_(0, due, tracked_norm);
      confirmed.index_copy_(0, due, true_norm <= t_true.index_select(0, due).to(at::kDouble));
      // The rows' targets in the tracked norm, at the ratio the true residual shows now.
      t.index_copy_(0, due,
                    (t_true.index_select(0, due).to(at::kDouble) * tracked_norm /
                     true_norm.clamp_min(std::numeric_limits<double>::min()))
                        .to(t.scalar_type()));
    }
    // Only the replaced rows' preconditioned residuals and r · z change (fresh is their r now).
    const at::Tensor z_due = prec.apply(fresh, m_due, due);
    rz.index_copy_(0, due, at::linalg_vecdot(fresh, z_due));
    // A row whose recurrence had drifted from its true residual (one that looked converged, whose recurrence went
    // on falling in fp32 while the true residual did not), or that diverged, restarts from its true residual: its
    // search direction would take a step orders of magnitude off.
    const at::Tensor restart =
        worse | (at::linalg_vector_norm(fresh - recurrence, 2, {1}).to(at::kDouble) > kDriftRestart * tracked_norm);
    p.index_copy_(0, due, at::where(restart.unsqueeze(1), z_due, p.index_select(0, due)));
    state.flops += 2.0 * fn * fn * static_cast<double>(due.size(0)) + (split ? 0.0 : prec.flops(due.size(0), n));
    return stop;
  };
  // The norms of the tracked residuals (split: rz is r · r).
  const auto residual_norms = [&] { return split ? rz.sqrt() : at::linalg_vector_norm(r, 2, {1}); };
  for (int64_t it = 0; it < budget; ++it) {
    if (fp64 != nullptr) {
      const at::Tensor rnorm = residual_norms();
      active = rnorm > t;
      // Rows whose recurrence fell kReliableUpdateReduction since their last replacement are due; they are replaced
      // together once a quarter of the active rows are (or one has fallen far past it), and every live row before
      // the run stops, since a row may look converged only by its drifted recurrence.
      const int64_t active_count = active.sum().item<int64_t>();
      at::Tensor fallen = rnorm / (split ? rnorm_split_replaced : rnorm_replaced);
      // A recurrence that grew tenfold past its last true residual is due at once: the row may be diverging (CG's
      // residual norms are not monotone, so smaller rises are left alone).
      const at::Tensor grown = active & (fallen > kGrowthDue);
      // A split CG's rows that look converged by their recurrence are checked on their true residual before they
      // may leave the batch: C⁻¹ r says only roughly how far |r| is from its target.
      const at::Tensor unconfirmed = split ? active.logical_not() & confirmed.logical_not() : at::zeros_like(active);
      const at::Tensor stale = active & (segment_start <= it - rhs.size(1));
      const at::Tensor due_mask = active_count == 0
                                      ? at::ones_like(active)
                                      : (active & (fallen < kReliableUpdateReduction)) | grown | unconfirmed | stale;
      const int64_t due_count = due_mask.sum().item<int64_t>();
      const bool urgent = (active & ((fallen < kReliableUpdateUrgent) | grown | stale)).any().item<bool>() ||
                          unconfirmed.any().item<bool>();
      if (active_count == 0 || (due_count > 0 && (4 * due_count >= active_count || urgent))) {
        const at::Tensor due = due_mask.nonzero().squeeze(1);
        const SteadyClock::time_point replacing = SteadyClock::now();
        const bool stop = replace_residuals(due, stale.index_select(0, due));
        state.work.replacement_seconds += seconds_since(replacing);
        state.work.replaced_rows += due.size(0);
        segment_start.index_fill_(0, due, it);
        active = residual_norms() > t;
        if (stop) break;
      }
    } else if (!map.matrix.defined()) {
      active = at::linalg_vector_norm(r, 2, {1}) > t;
    } else if (it % kMapCheckEvery == 0) {
      active = at::linalg_vector_norm(at::matmul(r, map.matrix) * map_mask, 2, {1}) > t;
      state.flops += 2.0 * fn * fn * static_cast<double>(live);
    }
    const int64_t count = active.sum().item<int64_t>();
    if (count == 0) break;
    if (rnorm_start.defined() && should_abandon(state, it, r, rnorm_start, t, active, split)) {
      state.abandoned = true;
      break;
    }
    if (count <= kCompactBelow * static_cast<double>(live)) {
      // Write the finished rows' answers and keep only the active ones.
      e.index_copy_(0, rows, x);
      const at::Tensor keep = active.nonzero().squeeze(1);
      rows = rows.index_select(0, keep);
      x = x.index_select(0, keep);
      r = r.index_select(0, keep);
      m = m.index_select(0, keep);
      t = t.index_select(0, keep);
      if (map_mask.defined()) map_mask = map_mask.index_select(0, keep);
      if (rnorm_replaced.defined()) rnorm_replaced = rnorm_replaced.index_select(0, keep);
      if (split) {
        t_true = t_true.index_select(0, keep);
        confirmed = confirmed.index_select(0, keep);
        rnorm_split_replaced = rnorm_split_replaced.index_select(0, keep);
      }
      if (rnorm_start.defined()) rnorm_start = rnorm_start.index_select(0, keep);
      if (diverged.defined()) diverged = diverged.index_select(0, keep);
      if (segment_start.defined()) segment_start = segment_start.index_select(0, keep);
      p = p.index_select(0, keep);
      rz = rz.index_select(0, keep);
      active = active.index_select(0, keep);
      prec.select(keep);
      live = count;
    }
    if (split) {
      // The passes, then the rest of the iteration in one sweep per row (split_cg.h): as separate passes over
      // [rows, n] it took about a tenth of an iteration at OPT-125M's fc2.
      const SteadyClock::time_point applying = SteadyClock::now();
      const auto [f, y] = prec.split_passes(p, m);
      state.work.operator_seconds += seconds_since(applying);
      state.work.row_iterations += live;
      solve_detail::SplitCgState cg{p, r, x, rz};
      solve_detail::split_cg_step(cg, f, y, m, active);
      rz = cg.rz;
      state.flops += prec.flops(live, n);
      ++state.iterations;
      continue;
    }
    // In place where the state allows: each pass over [rows, n] costs about 1% of the product at OPT-125M's fc2.
    const SteadyClock::time_point applying = SteadyClock::now();
    at::Tensor q = at::matmul(p, h);
    q.mul_(m);
    state.work.operator_seconds += seconds_since(applying);
    state.work.row_iterations += live;
    const at::Tensor pq = at::linalg_vecdot(p, q);
    const at::Tensor alpha = at::where(active & (pq > 0), rz / pq, at::zeros_like(pq)).unsqueeze(1);
    x.addcmul_(p, alpha);
    r.addcmul_(q, alpha, -1.0);
    const SteadyClock::time_point preconditioning = SteadyClock::now();
    z = prec.apply(r, m);
    state.work.operator_seconds += seconds_since(preconditioning);
    state.flops += 2.0 * fn * fn * static_cast<double>(live) + prec.flops(live, n);
    ++state.iterations;
    const at::Tensor rz_next = at::linalg_vecdot(r, z);
    const at::Tensor beta = at::where(active & (rz > 0), rz_next / rz, at::zeros_like(rz)).unsqueeze(1);
    p = z.addcmul_(p, beta);  // z is not used again before the next application makes a new one
    rz = rz_next;
  }
  e.index_copy_(0, rows, x);
  if (known != nullptr && residual64.defined()) *known = {residual64, e.eq(0).all(1).logical_and_(replaced)};
  state.work.cg_seconds += seconds_since(started);
  return fp64 != nullptr ? e64 + e.to(at::kDouble) : e;
}

// Solves one round's correction equation (H e)_T = ρ_T (e_S = 0) for every row, in the working precision, in one
// of two formulations (which one: IterativePreconditioner, include/optima/solve/row_solver.h).
// - Pruned space (kPrunedSpace): with G = H⁻¹, H_TT⁻¹ = G_TT − G_TS G_SS⁻¹ G_ST, so e_T = (y − G μ)_T with y = G ρ
//   and G_SS μ = y_S, solved by CG on the pruned set with diag(G) as preconditioner. Two more products per round,
//   one per iteration. In fp64 it needs 1.6-6x fewer iterations than the kept-space CG on real Hessians: the
//   small eigenvalues of an LLM layer's H (correlated, nearly redundant inputs), which H_TT inherits, are the large
//   ones of G, few and removed first by CG.
// - Kept space (kLowRank, kInverseBlock): CG on H_TT e_T = ρ_T directly, with the preconditioner named.
class CorrectionSolver {
 public:
  CorrectionSolver(const System& system, const at::Tensor& pruned, IterativePreconditioner kind, at::ScalarType work,
                   int64_t setup_bytes, CgState& state)
      : work_(work),
        pruned_space_(kind == IterativePreconditioner::kPrunedSpace ||
                      (kind == IterativePreconditioner::kAuto && work == at::kDouble &&
                       auto_uses_pruned_space(system.condition))) {
    const double n = static_cast<double>(system.h.size(0));
    kept_ = pruned.logical_not().to(work);
    if (pruned_space_) {
      const at::Tensor g = at::cholesky_inverse(system.l);
      state.flops += 2.0 * n * n * n / 3;
      op_ = g.to(work);
      h_ = system.h.to(work);
      active_ = pruned.to(work);
      prec_ = Preconditioner::jacobi(g.diagonal().reciprocal().to(work));
      return;
    }
    h64_ = system.h;
    kept64_ = pruned.logical_not().to(at::kDouble);
    const bool masked =
        masked_cholesky_for(kind, system) && (kind == IterativePreconditioner::kMaskedCholesky || work == at::kFloat);
    at::Tensor l = masked ? masked_factor(system, pruned, state) : at::Tensor();
    // The split CG never multiplies by H itself (its passes run over the factor).
    if (!masked) op_ = h64_.to(work);
    kept_ = kept64_.to(work);
    active_ = kept_;
    if (kind == IterativePreconditioner::kInverseBlock) {
      prec_ = Preconditioner::inverse_block(at::cholesky_inverse(system.l).to(work));
      state.flops += n * n * n;
    } else if (masked) {
      prec_ = Preconditioner::masked_cholesky(l.to(work).contiguous());
    } else {
      prec_ = low_rank_preconditioner(system.h, pruned.logical_not(), work, setup_bytes, state.flops);
    }
  }

  bool pruned_space() const { return pruned_space_; }
  // The formulation to hand over to when this one's rounds stop paying, kAuto for none: the pruned space (G too
  // inexact) hands over to the kept space; the masked Cholesky (a Hessian so ill-conditioned that its split CG,
  // minimizing |C⁻¹ r|, leaves |r| itself where it was: cond 1e12 in the tests, beyond any layer measured) to the
  // low-rank preconditioner.
  IterativePreconditioner handover() const {
    if (pruned_space_) return IterativePreconditioner::kLowRank;
    return prec_.split() ? IterativePreconditioner::kLowRank : IterativePreconditioner::kAuto;
  }

  // Whether correct() runs reliable updates: an fp32 CG aiming at the tolerance itself against fp64 residuals (a
  // split preconditioner's CG tracks C⁻¹ r, so it checks the true residual the same way in fp64 too). Only then may
  // the residual it starts from be inexact (see correct).
  bool reliable_updates() const { return !pruned_space_ && (work_ == at::kFloat || prec_.split()); }

  // e [rows, n] (kept entries only) for the residual ρ_T = (H offset)_T (offset fp64 [rows, n]); rows at most `target`
  // get e = 0, the others aim at max(target, reduction · |ρ|), within `budget` CG iterations. ρ is fp64, or, where
  // reliable_updates(), may come from an fp32 product. `known`, if given, receives the fp64 residual
  // (H (offset − e))_T where the CG knows it (undefined where it knows none).
  at::Tensor correct(const at::Tensor& residual, const at::Tensor& offset, const at::Tensor& rnorm,
                     const at::Tensor& target, double reduction, int64_t budget, CgState& state,
                     KnownResidual* known = nullptr) const {
    if (known != nullptr) *known = {};
    if (reliable_updates()) {
      const auto ordered = [this](const at::Tensor& t) { return order_.defined() ? t.index_select(1, order_) : t; };
      const Fp64System system{h64_, ordered(residual), ordered(offset), kept64_};
      const at::Tensor& start = system.rhs;
      at::Tensor e = pcg(op_, prec_, start.to(work_), active_, target.to(work_), budget, state, {}, &system, known);
      if (!order_.defined()) return e;
      const at::Tensor inverse = at::argsort(order_);
      if (known != nullptr) known->residual = known->residual.index_select(1, inverse);
      return e.index_select(1, inverse);
    }
    const at::Tensor rho = residual.to(work_);
    const at::Tensor asked = at::maximum(target / rnorm.clamp_min(1e-300), at::full_like(rnorm, reduction));
    if (!pruned_space_) return pcg(op_, prec_, rho, active_, (rnorm * asked).to(work_), budget, state);
    // The kept-set residual an inexact μ leaves is (H r)_T for the pruned-set residual r = c − G_SS μ: the CG
    // stops on that (measured every few iterations), since its ratio to |r| / |c| reaches cond(H).
    const double product = 2.0 * static_cast<double>(op_.size(0) * op_.size(0) * rho.size(0));
    const at::Tensor y = at::matmul(rho, op_);
    const at::Tensor c = y * active_;
    // CG on |S| unknowns needs at most |S| iterations in exact arithmetic; a round still short of its target well
    // past that is not converging (G too inexact), and the caller undoes it.
    const int64_t cap = std::min(budget, 2 * op_.size(0) + kPrunedSpaceExtraIterations);
    const at::Tensor mu = pcg(op_, prec_, c, active_, (rnorm * asked).to(work_), cap, state, {h_, kept_});
    state.flops += 2 * product;
    return (y - at::matmul(mu, op_)) * kept_ * (rnorm > target).unsqueeze(1).to(work_);
  }

 private:
  at::ScalarType work_;
  bool pruned_space_;
  at::Tensor op_, active_, kept_;
  at::Tensor h_;             // pruned space: H in the working precision, for the stopping rule
  at::Tensor h64_, kept64_;  // kept space: the fp64 system behind fp32 work (reliable updates)
  at::Tensor order_;         // masked Cholesky: the inputs' order of the system above (undefined: as given)

  // H's factor in the masked Cholesky's input order: the system's own where prepare_system posed it in that order,
  // or, where the system is in the given order (a layer that planned no masked Cholesky, or a singular one), a factor
  // of H permuted here; where that fails, the given order. The kept space's system is then solved in that order (h64_
  // and kept64_ permuted; correct() maps residuals and corrections).
  at::Tensor masked_factor(const System& system, const at::Tensor& pruned, CgState& state) {
    if (system.order.defined()) return system.l;
    const at::Tensor order = by_correlation(pruned, h64_);
    at::Tensor h = permute_symmetric(h64_, order);
    auto [l, ok] = solve_detail::cholesky_factor(h);
    // Definite as given, definite permuted, up to round-off: where that fails, the given order.
    if (!ok) return system.l;
    const double n = static_cast<double>(h64_.size(0));
    state.flops += n * n * n / 3;
    h64_ = std::move(h);
    kept64_ = kept64_.index_select(1, order);
    order_ = order;
    return l;
  }
  Preconditioner prec_;
};

// Bytes one row holds at the iterative solver's peak, for the row chunks of --qp-memory: about 24 fp64 vectors of n
// (the refinement's weights, masks, residuals and undo copies; CG's vectors in the working precision; the fp64
// residual replacements' temporaries) and, with the low rank, its k x k Woodbury core and inverse.
int64_t iterative_bytes_per_row(int64_t n) {
  const int64_t k = low_rank_size(n);
  return 8 * (24 * n + 2 * k * k);
}

// The fp64 residual (H (w − x))_T after a round, taken from the CG where it knows it (KnownResidual) and computed
// for the other rows.
at::Tensor next_residual(const at::Tensor& w, const at::Tensor& x, const at::Tensor& h, const at::Tensor& kept,
                         const KnownResidual& known, CgState& state) {
  const double row_product = 2.0 * static_cast<double>(h.size(0) * h.size(0));
  if (!known.residual.defined()) {
    state.flops += row_product * static_cast<double>(x.size(0));
    return at::matmul(w - x, h) * kept;
  }
  const at::Tensor unknown = known.known.logical_not().nonzero().squeeze(1);
  at::Tensor residual = known.residual;
  if (unknown.numel() > 0) {
    const at::Tensor computed =
        at::matmul(w.index_select(0, unknown) - x.index_select(0, unknown), h) * kept.index_select(0, unknown);
    residual.index_copy_(0, unknown, computed);
    state.flops += row_product * static_cast<double>(unknown.numel());
  }
  return residual;
}

// The CG's counts and timings into a chunk's result.
void copy_work(const CgState& state, RowSolveResult& result) {
  result.iterations = state.iterations;
  result.flops = state.flops;
  result.work = state.work;
}

// One chunk of rows of solve_rows_iterative, against the layer's System: the fields of the result that depend on the
// rows (weight, residuals, iterations, rounds, flops past the Cholesky of H).
RowSolveResult solve_chunk(const System& system, const at::Tensor& dense_weight, const at::Tensor& pruned,
                           const at::Tensor& start, double tolerance, int64_t max_iterations,
                           const RowSolveOptions& options) {
  RowSolveResult result;
  const double n = static_cast<double>(dense_weight.size(1));
  const at::Tensor& h = system.h;
  const at::Tensor w = dense_weight.to(at::kDouble);
  const at::Tensor kept = pruned.logical_not().to(at::kDouble);
  const double product_flops = 2.0 * n * n * static_cast<double>(w.size(0));

  // Optimality: (H ŵ)_T = (H w)_T with ŵ_S = 0. |(H w)_T| only scales each row's tolerance and the reported residual,
  // which an fp32 product holds to about 1e-6 of themselves at half the cost of an fp64 one (0.075 s at OPT-125M's
  // fc2); the residuals themselves, (H (w − x))_T, are fp64 products (but the first one, below).
  const at::Tensor h32 = h.to(at::kFloat), kept32 = kept.to(at::kFloat);
  const at::Tensor hw_t = (at::matmul(dense_weight.to(at::kFloat), h32) * kept32).to(at::kDouble);
  const at::Tensor hw_t_norm = at::linalg_vector_norm(hw_t, 2, {1});
  const at::Tensor target = hw_t_norm * tolerance;
  // Rows with nothing pruned are solved by w itself; the others start from the given point.
  const at::Tensor whole = pruned.any(1, /*keepdim=*/true).logical_not();
  at::Tensor x = at::where(whole, w, start.to(at::kDouble)) * kept;

  const bool fp32 = options.precision == SolvePrecision::kFloat32Refined;
  // The masked Cholesky's fp32 passes hold past the estimates that send other fp32 work to fp64 (see
  // kMaskedCholeskyConditionMax); a round of it that does not pay still goes to fp64.
  result.fp64_predicted =
      fp32 && predict_fp64(system.condition) && !masked_cholesky_for(options.preconditioner, system);
  bool work32 = fp32 && !result.fp64_predicted;
  CgState state;
  state.abandon_at = options.abandon_iterations;
  state.flops += 2 * product_flops;  // H w, first residual
  // The low rank's setup products (row_woodbury_cores) take at most a quarter of the budget at a time.
  const int64_t setup_bytes = std::max<int64_t>(options.memory_budget_bytes / 4, 1);
  CorrectionSolver corrector(system, pruned, options.preconditioner, work32 ? at::kFloat : at::kDouble, setup_bytes,
                             state);
  double previous = std::numeric_limits<double>::infinity();
  // The first residual: an fp32 corrector with reliable updates computes every residual it replaces or reports in
  // fp64 from the offset w − x, and only starts from this one, which an fp32 product then gives at half the cost (0.1
  // s of a 7 s layer at OPT-125M's fc2). Until a round has run, `residual` is that estimate. (No such round is undone:
  // fp32 rounds of the kept space do not hand over, see may_hand_over.)
  const auto exact_residual = [&] { return at::matmul(w - x, h) * kept; };
  bool residual_exact = !(work32 && corrector.reliable_updates());
  at::Tensor residual =
      residual_exact ? exact_residual() : (at::matmul((w - x).to(at::kFloat), h32) * kept32).to(at::kDouble);
  // Before the last round of a formulation that may hand over (CorrectionSolver::handover), which may have to be
  // undone.
  at::Tensor x_before, residual_before;
  bool last_round_undoable = false, before_pruned_space = false;
  const auto undo_round = [&] {
    x = x_before;
    residual = residual_before;
    if (before_pruned_space) --result.pruned_space_rounds;
  };
  // A formulation hands over in fp64, or from the pruned space in any precision: a masked-Cholesky round in fp32 that
  // does not pay goes to fp64 first (below).
  const auto may_hand_over = [&] {
    return corrector.handover() != IterativePreconditioner::kAuto && (corrector.pruned_space() || !work32);
  };
  for (int round = 0; round <= options.max_refinement_steps && state.iterations < max_iterations; ++round) {
    at::Tensor rnorm = at::linalg_vector_norm(residual, 2, {1});
    double worst = (rnorm / hw_t_norm.clamp_min(1e-300)).max().item<double>();
    if (may_hand_over() && !(worst < previous * kFp32Progress)) {
      // The corrections stopped paying (the pruned space: G = H⁻¹ too inexact for this H, whose condition estimate,
      // a lower bound, looked fine, or fp32 work): the next formulation from here on, after undoing a round that
      // made things worse.
      if (!(worst < previous)) {
        undo_round();
        rnorm = at::linalg_vector_norm(residual, 2, {1});
        worst = previous;
      }
      previous = std::numeric_limits<double>::infinity();
      corrector =
          CorrectionSolver(system, pruned, corrector.handover(), work32 ? at::kFloat : at::kDouble, setup_bytes, state);
    }
    if (!(rnorm > target).any().item<bool>()) break;
    result.refinement_steps = round + 1;
    // Correction equation (H e)_T = residual_T in the working precision; x += e; the fp64 residual again.
    // fp32 rounds that no longer cut the residual tenfold, or too slowly to reach the tolerance in the rounds left:
    // fp32 cannot hold this layer; fp64 from here on.
    const double contraction = worst / previous;
    const double rounds_left = options.max_refinement_steps - round;
    if (work32 && (!(contraction < kFp32Progress) || worst * std::pow(contraction, rounds_left) > tolerance)) {
      work32 = false;
      result.fp64_fallback_rows = w.size(0);
      corrector = CorrectionSolver(system, pruned, options.preconditioner, at::kDouble, setup_bytes, state);
    }
    previous = worst;
    last_round_undoable = may_hand_over();
    if (last_round_undoable) {
      x_before = x;
      residual_before = residual;
      before_pruned_space = corrector.pruned_space();
    }
    if (corrector.pruned_space()) ++result.pruned_space_rounds;
    const double reduction = work32 ? kInnerReductionFp32 : kInnerReductionFp64;
    KnownResidual known;
    if (!residual_exact && !corrector.reliable_updates()) {  // a corrector that takes ρ as it is
      residual = exact_residual();
      residual_exact = true;
      state.flops += product_flops;
    }
    const at::Tensor e =
        corrector.correct(residual, w - x, rnorm, target, reduction, max_iterations - state.iterations, state, &known);
    if (state.abandoned) {
      result.abandoned = true;
      result.converged = false;
      copy_work(state, result);
      return result;
    }
    x = x + e.to(at::kDouble) * kept;
    residual = next_residual(w, x, h, kept, known, state);
    residual_exact = true;
  }
  if (!residual_exact) {  // no round ran: the estimate said every row had converged
    residual = exact_residual();
    state.flops += product_flops;
  }
  result.kkt_residual = solve_detail::relative_residual(residual, hw_t_norm).max().item<double>();
  // A last round that made things worse (the loop ended before it could be undone) is undone here.
  if (last_round_undoable && !(result.kkt_residual <= previous)) {
    undo_round();
    result.kkt_residual = solve_detail::relative_residual(residual, hw_t_norm).max().item<double>();
  }
  if (system.damping == 0) {
    result.kkt_residual_undamped = result.kkt_residual;
  } else {
    // (H₀ δ)_T = (H δ)_T − damping · δ_T with δ = ŵ − w; the residual above is −(H δ)_T.
    const at::Tensor delta_t = (x - w) * kept;
    const at::Tensor rho0 = residual + system.damping * delta_t;
    const at::Tensor hw0_norm = at::linalg_vector_norm(hw_t - system.damping * w * kept, 2, {1});
    result.kkt_residual_undamped = solve_detail::relative_residual(rho0, hw0_norm).max().item<double>();
  }
  result.converged = result.kkt_residual <= tolerance;
  copy_work(state, result);
  result.weight = x.masked_fill(pruned, 0.0).to(dense_weight.scalar_type());
  return result;
}

}  // namespace

bool auto_uses_pruned_space(double condition_estimate) {
  return condition_estimate >= kPrunedSpaceConditionMin && condition_estimate <= kPrunedSpaceConditionLimit;
}

bool auto_uses_masked_cholesky(double condition_estimate, int64_t inputs) {
  return inputs >= kMaskedCholeskyMinInputs && condition_estimate <= kMaskedCholeskyConditionMax;
}

double cholesky_condition_estimate(const at::Tensor& l) {
  if (l.numel() == 0) return 1.0;
  const at::Tensor d = l.diagonal().to(at::kDouble).abs();
  const double lo = d.min().item<double>(), hi = d.max().item<double>();
  if (!(lo > 0) || !std::isfinite(hi)) return std::numeric_limits<double>::infinity();
  return (hi / lo) * (hi / lo);
}

RowSolveResult solve_rows_iterative(const at::Tensor& dense_weight, const at::Tensor& pruned, const at::Tensor& hessian,
                                    const at::Tensor& start, double tolerance, int64_t max_iterations,
                                    const RowSolveOptions& options) {
  solve_detail::validate_inputs(kWhere, dense_weight, pruned, hessian, start);
  if (!start.defined()) fail_input(kWhere, "a start point must be given", "[out, in] weights", "none");
  if (!(tolerance > 0)) fail_usage(fmt::format("{}: tolerance must be > 0, found {}", kWhere, tolerance));
  if (max_iterations < 0) fail_usage(fmt::format("{}: max_iterations must be >= 0, found {}", kWhere, max_iterations));
  solve_detail::validate_options(kWhere, options.damp, options.memory_budget_bytes);
  solve_detail::require_finite(kWhere, "weight", dense_weight);
  solve_detail::require_finite(kWhere, "start", start);
  System system = prepare_system(hessian, pruned, options);
  const SteadyClock::time_point probing = SteadyClock::now();
  if (system.order.defined()) choose_masked_order(system, dense_weight, pruned, start);
  const double order_probe_seconds = seconds_since(probing);
  const int64_t rows = dense_weight.size(0), n = dense_weight.size(1);
  const double fn = static_cast<double>(n);
  // The rows' inputs in the system's order.
  const auto in_order = [&system](const at::Tensor& t) {
    return system.order.defined() ? t.index_select(1, system.order) : t;
  };
  const at::Tensor weight_ordered = in_order(dense_weight), pruned_ordered = in_order(pruned),
                   start_ordered = in_order(start);

  RowSolveResult result;
  result.dead_inputs = system.dead_inputs;
  result.mean_diag = system.mean_diag;
  result.damping = system.damping;
  result.factor_damping = system.damping;
  result.damping_retries = system.retries;
  result.condition_estimate = system.condition;
  result.factor_flops = fn * fn * fn / 3 + system.extra_factor_flops;
  result.flops = result.factor_flops + system.probe_flops;  // the Cholesky of H (and choose_masked_order's work)
  if (system.order.defined()) result.input_order = system.order_by_pruned_share ? "by_pruned_share" : "by_correlation";
  result.order_probe_seconds = order_probe_seconds;
  // Row chunks within --qp-memory: each is solved on its own against the shared H.
  const int64_t per_chunk =
      std::max<int64_t>(1, std::min(rows, options.memory_budget_bytes / iterative_bytes_per_row(n)));
  std::vector<at::Tensor> weights;
  int64_t begin = 0;
  do {  // once at least: an empty layer is one empty chunk
    const int64_t count = std::min(per_chunk, rows - begin);
    const RowSolveResult part =
        solve_chunk(system, weight_ordered.narrow(0, begin, count), pruned_ordered.narrow(0, begin, count),
                    start_ordered.narrow(0, begin, count), tolerance, max_iterations, options);
    begin += count;
    ++result.chunks;
    result.flops += part.flops;
    result.work += part.work;
    result.iterations = std::max(result.iterations, part.iterations);
    if (part.abandoned) {
      result.abandoned = true;
      result.converged = false;
      return result;
    }
    result.fp64_predicted = result.fp64_predicted || part.fp64_predicted;
    result.kkt_residual = std::max(result.kkt_residual, part.kkt_residual);
    result.kkt_residual_undamped = std::max(result.kkt_residual_undamped, part.kkt_residual_undamped);
    result.refinement_steps = std::max(result.refinement_steps, part.refinement_steps);
    result.fp64_fallback_rows += part.fp64_fallback_rows;
    result.pruned_space_rounds = std::max(result.pruned_space_rounds, part.pruned_space_rounds);
    result.converged = result.converged && part.converged;
    weights.push_back(part.weight);
  } while (begin < rows);
  result.weight = weights.size() == 1 ? weights.front() : at::cat(weights, 0);
  if (system.order.defined()) result.weight = result.weight.index_select(1, at::argsort(system.order));
  return result;
}

}  // namespace optima
