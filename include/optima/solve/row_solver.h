// Exact OPTIMA reconstruction: the per-row masked least-squares solve that follows mask selection.
//
// Every row r of a linear layer's weight W [out, in] solves
//   min over ŵ (ŵ − w)ᵀ H (ŵ − w)   subject to ŵ_i = 0 for every pruned i,
// with w the DENSE row and H [in, in] the layer's Hessian, shared by all rows. With T the kept and S the pruned
// columns of the row: ŵ_T = w_T + H_TT⁻¹ H_TS w_S, ŵ_S = 0; equivalently δ = ŵ − w = −G[:, S] (G_SS)⁻¹ w_S with
// G = H⁻¹. Optimality: (H δ)_T = 0. See docs/algorithms.md §6.
//
// How the exact solver works (device-generic ATen code; the same path runs on CUDA through cuBLAS/cuSOLVER):
// - H is symmetrised and converted to fp64; dead inputs (H_jj == 0, an input that is always zero) get H_jj = 1
//   and their off-diagonal entries zeroed, as SparseGPT does; the row's weight on a dead input then has no effect
//   on the layer's output and is kept as it is when not pruned. Then `damp · mean(diag H)` is added to diag H.
// - Each row solves the smaller of its two systems: when |S| <= |T|, (G_SS) z = w_S with G = H⁻¹ (one Cholesky of
//   H per layer); otherwise H_TT x = H_TS w_S. Rows are grouped by branch and sorted by system size; a chunk of
//   rows (sized from `memory_budget_bytes`) gathers its systems into one batch [rows, m, m] and factors it with a
//   batched Cholesky. Rows with fewer unknowns than the chunk's largest are padded with identity rows and columns
//   and a zero right-hand side, which leaves their solution unchanged. When every row of a chunk has the same size
//   (N:M masks, Wanda's per-row masks) the gather needs no padding.
// - Each chunk is then refined against the true fp64 KKT residual (H δ)_T computed from the full H, reusing the
//   chunk's factors, until the largest relative residual is at most `refinement_tolerance`, stops improving, or
//   `max_refinement_steps` corrections were made. In fp64 this removes the error that an inaccurate G = H⁻¹
//   leaves on ill-conditioned H; with kFloat32Refined it is classic mixed-precision iterative refinement (fp32
//   factors, fp64 residuals). A chunk whose fp32 factorization fails, or whose refinement ends (or, contracting
//   too slowly to make it in the steps left, would end) above the tolerance, is solved again in fp64, and so are
//   the layer's later chunks, without an fp32 attempt (the conditioning is the layer's); all count in
//   `fp64_fallback_rows`.
// - Where H as stated is definite (Cholesky condition estimate at most kSingularCondition, the iterative solver's
//   rule), the damping only keeps the factorizations safe: each row is then polished to H's own optimum
//   (polish_to_undamped in row_solver.cpp) until its undamped relative KKT residual is `undamped_tolerance`. The
//   polishing, a CG preconditioned with the chunk's factors, starts from the first solve and takes its error out
//   with the damping's; only a chunk where some row does not get there is refined to the damped optimum and
//   polished from that, and rows that still do not get there keep the damped optimum and are counted in
//   `damped_rows`.
// - A failed fp64 factorization (H, or a chunk's systems) raises the damping tenfold (starting from
//   1e-10 · mean(diag H) when it was zero) and solves the layer again, at most `max_damping_retries` times and
//   never past 1e-2 · mean(diag H) (SparseGPT's damping); each retry is counted in the result. Past that, or on
//   non-finite inputs or a negative diagonal, an Error of kind kNumeric is thrown.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "optima/core/defaults.h"

namespace optima {

// The relative damping used when none is given (kDefaultRowSolveDamp, core/defaults.h): 1e-6 · mean(diag H). Measured
// (bench/solver_cpu.json, "damping") on LLM-like Hessians (outlier input features, correlated inputs; 768 inputs, 256
// rows, 50% magnitude mask), as the increase of the undamped objective over the undamped optimum:
//   full rank (8192 tokens, cond 2.6e6):  1e-8: 7e-12   1e-6: 7e-8   1e-4: 3e-4   1e-2: 5e-2
//   rank 512 (512 tokens, singular):      0 and 1e-8 need 4 and 1 damping retries and send half of the fp32 rows
//                                         to fp64;   1e-6: 8e-5, no retry, no fallback   1e-4: 0.10   1e-2: 1.6
// So 1e-6 keeps the paper's (undamped) optimum to 1e-7 where H has full rank, which is the usual case with 128 x 2048
// calibration tokens, and makes singular H (dead or duplicated features) well-posed without retries; SparseGPT's
// 1e-2 would give up percents of the objective that OPTIMA exists to win.

enum class SolvePrecision {
  kFloat64,         // gathers, factorizations and solves in fp64
  kFloat32Refined,  // fp32 gathers and factorizations; fp64 residuals drive iterative refinement
};

// The iterative solver's formulation and preconditioner. kPrunedSpace: CG on each row's pruned-set system
// G_SS μ = (G ρ)_S with G = H⁻¹, preconditioned by diag(G); one product with G per iteration. kLowRank and
// kInverseBlock run CG on the kept-set system H_TT e = ρ_T: with Woodbury on a low-rank-plus-diagonal model of H
// restricted to T (a few thin products per iteration), or with G_TT (one more full product per iteration).
// kAuto (default): in fp32, kMaskedCholesky on layers of at least 2048 inputs whose H's condition estimate is at most
// 1e12 (auto_uses_masked_cholesky, below; its fp32 passes are tried even past the estimates that send other
// fp32 work to fp64 directly), kLowRank elsewhere; in fp64, kPrunedSpace where H's condition estimate lies between 1e5
// and 1e9 (auto_uses_pruned_space; rounds that stop paying hand over to kLowRank, undone when they made things worse),
// kLowRank elsewhere. Measured in fp64 on real Hessians (bench/solver_cpu.json, "real", iterations): the pruned space
// needs fewer where H is ill-conditioned (random OPT-125M: fc2, estimate 1e7, 76-84 against 132; out_proj, 2e5, 296-332
// against 520-550; opt-small fc2, 4e6, 80-88 against 255-265) and more where it is not (random OPT-125M q_proj, 2e3,
// 100-136 against 58-59; fc1, 2e4, 132-140 against 58; stories260k, below 30; the benchmark's synthetic
// low-rank-plus-diagonal Hessians, whose low-rank part kLowRank captures exactly, 44-52 against 20-21 whatever their
// estimate). In fp32 the pruned space's correction y − (G μ)_T cancels terms up to cond(H) times larger than the
// result, so fp32 rounds contract slowly and it needs more iterations than kLowRank there (OPT-125M fc2: 188 against
// 163).
//
// kMaskedCholesky: the kept-set system with L_TT L_TTᵀ as split preconditioner, L = chol(H) restricted to the
// row's kept set (solve/masked_cholesky.h), the inputs in whichever of two orders a probe of a few rows finds faster:
// by how often each is pruned, or by that times how strongly it correlates with the others, least first
// (choose_masked_order in row_solver_iterative.cpp; RowSolveResult::input_order says which). H_TT
// = L_TT L_TTᵀ + L_TS L_TSᵀ, so CG runs on I + B Bᵀ (B = L_TT⁻¹ L_TS), whose spectrum starts at 1, and an iteration is
// two masked triangular passes over L (about one product's flops) with no product with H; L_TS only holds pruned inputs
// ordered before kept ones, hence the order. It needs the fewest iterations of all in fp64 (random OPT-125M fc2: 59-69,
// 77-78 in the inputs' own order, against 132 for kLowRank; one row's preconditioned condition number 55,
// against 1.9e6), but in fp32 its passes carry cond(H) · 2⁻²⁴ of error into C⁻¹ r (fc2: 85-100 iterations; q_proj and
// fc1, whose true condition number is about 4e8 behind an estimate of 2e3, go to fp64), and on these 2-core machines
// its two passes cost 1.3-1.7 products in fp32 (bench/solver_cpu.json "passes"; an fp32 iteration about 2 with the rest
// of CG's work, against 1.0-1.1 for kLowRank). So kAuto uses it in fp32 only where H is ill-conditioned enough that it
// needs far fewer iterations than kLowRank (fc2: 95-150 products against 116-174; bench/solver_cpu.json "real" and the
// README have the numbers). A round that does not pay in fp64 hands over to kLowRank.
enum class IterativePreconditioner { kAuto, kPrunedSpace, kMaskedCholesky, kLowRank, kInverseBlock };

struct RowSolveOptions {
  SolvePrecision precision = SolvePrecision::kFloat64;
  // Relative damping: damp · mean(diag H) is added to diag H (after dead inputs are fixed) before solving.
  double damp = kDefaultRowSolveDamp;
  // Bounds the bytes of one chunk's gathered systems and factors (and its row-sized work tensors); for the iterative
  // solver, of the rows one CG runs on at once (about 8 · (24 n + 2 k²) bytes a row). At least one row is solved at
  // a time whatever the budget.
  int64_t memory_budget_bytes = 1LL << 30;
  // Exact solver: refinement corrections per chunk. Iterative solver with kFloat32Refined: outer corrections.
  // A correction costs three products with the shared [n, n] matrices and one solve with the chunk's factors, far
  // less than solving the chunk again in fp64. With 5, fp32 factors of real Hessians (a random OPT-125M-shaped model
  // on C4) stopped short of the tolerance and whole chunks fell back to fp64.
  int max_refinement_steps = 10;
  // Refinement stops once every row's relative KKT residual is at most this.
  double refinement_tolerance = 1e-11;
  // Exact solver: each row's damped optimum is polished to the undamped one (conjugate gradients on H_TT with the
  // damped factors as preconditioner) where its relative KKT residual against the undamped H reaches this; rows
  // that do not (H_TT singular or nearly so) keep the damped optimum. 0: the damped optimum everywhere. --qp-tol.
  double undamped_tolerance = kDefaultQpTolerance;
  // Factorization failures that may each raise the damping tenfold before kNumeric is thrown.
  int max_damping_retries = 8;
  IterativePreconditioner preconditioner = IterativePreconditioner::kAuto;  // iterative solver only
  // Iterative solver, when positive: give up (RowSolveResult::abandoned) once this many iterations are spent, or
  // as soon as the residuals' fall so far projects that more would be needed. --qp-solver auto sets it to the
  // iterations that would cost as much as the exact solver, and runs the exact solver on a layer given up.
  int64_t abandon_iterations = 0;
};

// Where an iterative solve's work and time went, for benchmarks. The seconds are host wall time: on the CPU each part's
// own; on CUDA, whose kernels run asynchronously, an operator's time shows where the next convergence test
// synchronizes, and only cg_seconds stands as measured. row_iterations sums, over the iterations, the rows still in
// the batch: the CG's work in row-products, whatever the machine's load (at most rows x iterations; OPT-125M's fc2 at
// 50%: about 41 per row where the slowest takes 60).
struct IterativeWork {
  int64_t row_iterations = 0;
  double cg_seconds = 0;           // inside the CG (the rest: H's preparation and factor, first residuals, checks)
  double operator_seconds = 0;     // of which the products with H or the masked Cholesky's passes, per iteration
  double replacement_seconds = 0;  // of which the fp32 CG's fp64 residual replacements (reliable updates)
  int64_t replaced_rows = 0;       // rows those replacements took, summed over the replacements

  // Row chunks' work adds up to the layer's.
  IterativeWork& operator+=(const IterativeWork& other) {
    row_iterations += other.row_iterations;
    cg_seconds += other.cg_seconds;
    operator_seconds += other.operator_seconds;
    replacement_seconds += other.replacement_seconds;
    replaced_rows += other.replaced_rows;
    return *this;
  }
};

struct RowSolveResult {
  // [out, in] in the dense weight's dtype and device; pruned entries are exactly 0. Computed in fp64 (both
  // precisions) and cast at the end, so a half-precision weight carries that dtype's rounding.
  at::Tensor weight;
  // max over rows of ||(H (ŵ − w))_T|| / ||(H w)_T||, in fp64, with H the Hessian each row's answer solves (damped
  // or not) and ŵ the fp64 solution before the cast to the weight's dtype. Rows with an empty T count as 0; rows
  // with (H w)_T = 0 report the absolute ||(H (ŵ − w))_T||.
  double kkt_residual = 0;
  // The same measure against the UNDAMPED problem as stated (H after the dead-input fix, no damping). Both solvers
  // solve the undamped problem unless H is singular (or, exact solver, a row could not be polished), and then both
  // residuals are the same; where the damping stays this is about damping · ||δ_T|| / ||(H w)_T||.
  double kkt_residual_undamped = 0;
  double condition_estimate = 0;     // cholesky_condition_estimate of the matrix factored (damped H), when one was
  bool fp64_predicted = false;       // kFloat32Refined asked, but predict_fp64 sent the layer to fp64 directly
  double damping = 0;                // absolute damping of the problem the answer solves (0: H as stated)
  double factor_damping = 0;         // absolute damping added to diag H for the factorizations (exact) or the CG
  int64_t damped_rows = 0;           // exact solver: rows left at the damped optimum (polishing did not reach it)
  double mean_diag = 0;              // mean of diag H after dead inputs were fixed: the unit of relative damping
  int64_t damping_retries = 0;       // fp64 factorizations that failed and were retried with more damping
  int64_t dead_inputs = 0;           // inputs with H_jj == 0
  double flops = 0;                  // estimated flops: factorizations, triangular solves, matrix products
  double factor_flops = 0;           // the factorizations' share of `flops` (m³/3 per system, n³ for H⁻¹)
  double inverse_seconds = 0;        // wall time of the layer-wide Cholesky and H⁻¹ (exact solver, last attempt)
  int64_t chunks = 0;                // batches of gathered systems (exact), row chunks of the memory budget (CG)
  int64_t rows_via_inverse = 0;      // rows solved as G_SS z = w_S (|S| <= |T|)
  int64_t rows_via_kept = 0;         // rows solved as H_TT x = H_TS w_S (|S| > |T|)
  int64_t refinement_steps = 0;      // largest number of corrections any chunk needed (exact: refinement steps, or
                                     // polishing steps where it started from the first solve); outer steps (CG)
  int64_t fp64_fallback_rows = 0;    // kFloat32Refined: rows solved in fp64 after an fp32 attempt of the layer failed
  int64_t iterations = 0;            // CG iterations (iterative solver): each is two products over the active rows
  int64_t pruned_space_rounds = 0;   // iterative solver: correction rounds kept from the pruned-space formulation
  bool converged = true;             // iterative solver: reached `tolerance`
  bool abandoned = false;            // iterative solver: gave up at options.abandon_iterations; `weight` undefined
  int64_t abandoned_iterations = 0;  // solve_rows_auto: iterations of a CG given up for the exact solver
  IterativeWork work;                // iterative solver: where its work and time went
  // Iterative solver: the input order its masked Cholesky factored H in, "by_correlation" or "by_pruned_share" (see
  // choose_masked_order in row_solver_iterative.cpp); empty where the layer was solved in the inputs' own order.
  std::string input_order;
  double order_probe_seconds = 0;  // iterative solver: choose_masked_order's time, paid once a layer
};

// The exact solver. dense_weight [out, in] (floating point), pruned bool [out, in] (true where ŵ must be 0),
// hessian [in, in] (symmetric positive semi-definite, floating point), all on one device. Rows with nothing pruned
// keep w; rows with everything pruned become 0. Throws kInput on shape, dtype or device mismatches and kNumeric on
// non-finite inputs or a factorization that no allowed damping rescues.
RowSolveResult solve_rows_exact(const at::Tensor& dense_weight, const at::Tensor& pruned, const at::Tensor& hessian,
                                const RowSolveOptions& options = {});

// Iterative solver for wide layers, whose per-row systems cost (n/2)³/3 each to factor: preconditioned conjugate
// gradients on every row's kept-set system H_TT x = H_TS w_S at once. An iteration costs one matrix product over all
// rows, [rows, n] x [n, n], with H masked to each row's kept set T, plus the preconditioner (options.preconditioner):
// by default Woodbury on a low-rank-plus-diagonal (Nyström) model of diag(H)^(-1/2) H diag(H)^(-1/2) restricted to
// T, through one k x k matrix per row built once (a few thin products per iteration); or G_TT, the kept block of
// G = H⁻¹ (one more full product per iteration); or, in the pruned-space formulation (IterativePreconditioner, the
// default for fp64 rounds), CG on G_SS per row with one product with G per iteration. Each row keeps its own step
// lengths; rows that reached the tolerance leave the products (the batch is compacted as they do). fp32 rounds too
// slow to reach the tolerance in the rounds left switch the layer to fp64.
//
// Warm-started from `start` [out, in] (for example the selector's updated weights; its pruned entries are ignored).
// The system is the UNDAMPED H (dead inputs fixed as in the exact solver) whenever its Cholesky succeeds with a
// condition estimate (cholesky_condition_estimate; on a layer that runs the masked Cholesky, of H's factor in that
// preconditioner's input order, a lower bound on cond(H) as much as the given order's) of at most kSingularCondition;
// only a singular H is damped by `options.damp` · mean(diag H) (raised tenfold, as the exact solver does, while the
// factorization fails). Stops when every row's relative KKT residual is at most `tolerance` or after
// `max_iterations` iterations in all (then `converged` is false). kFloat32Refined: fp32 CG solves correction equations
// whose right-hand sides are fp64 residuals (at most max_refinement_steps + 1 rounds), unless the condition estimate
// predicts fp32 cannot hold the layer (predict_fp64), when it runs in fp64 directly. kFloat64: fp64 throughout.
RowSolveResult solve_rows_iterative(const at::Tensor& dense_weight, const at::Tensor& pruned, const at::Tensor& hessian,
                                    const at::Tensor& start, double tolerance, int64_t max_iterations,
                                    const RowSolveOptions& options = {});

// Which solver a layer uses, by predicted cost.
enum class RowSolverKind { kExact, kIterative };

// Predicted costs of a layer's two solvers in units of one dense product [rows, n] x [n, n] at the machine's
// matrix-product rate ("GEMM-equivalents"; the benchmark measures the same unit).
struct SolverCostPrediction {
  RowSolverKind choice = RowSolverKind::kExact;
  double exact_units = 0;      // batched Cholesky of every row's smaller system, at the rate measured for it
  double iterative_units = 0;  // kPredictedIterations iterations of two products, plus the layer's Cholesky of H
  // The iterations at which the iterative solver would have cost exact_units: past them it is given up.
  int64_t break_even_iterations = 0;
};

// The cheaper solver for this mask (pruned [out, in] bool, any device): the exact one costs Σ_r m_r³/3 with m_r =
// min(|S_r|, |T_r|) at a fraction of the matrix-product rate, the iterative one a nearly fixed number of products
// whatever m is, so the exact solver wins at small n or very uneven rows and the iterative one on wide layers.
SolverCostPrediction predict_solver_cost(const at::Tensor& pruned);

// --qp-solver auto on the rows given, with the prediction made for the whole layer: the exact solver where it is
// predicted cheaper; else the iterative one, given up for the exact solver once it has spent, or projects to need,
// predicted.break_even_iterations (then `abandoned_iterations` says how many it ran, `iterations` is 0 and the
// result is the exact solver's).
RowSolveResult solve_rows_auto(const at::Tensor& dense_weight, const at::Tensor& pruned, const at::Tensor& hessian,
                               const at::Tensor& start, double tolerance, int64_t max_iterations,
                               const RowSolveOptions& options, const SolverCostPrediction& predicted);

// A cheap lower bound on cond(H) from its Cholesky factor L (lower, [n, n]): (max_i L_ii / min_i L_ii)². Infinite
// when some L_ii is 0 or not finite.
double cholesky_condition_estimate(const at::Tensor& l);

// True when a layer whose (damped) Hessian has this condition estimate should be solved in fp64 directly: fp32
// factors of its systems, or fp32 CG with an fp32 preconditioner, would not converge to the refinement tolerance.
bool predict_fp64(double condition_estimate);
// Whether kAuto runs an fp64 round in the pruned space, from H's Cholesky condition estimate (see
// IterativePreconditioner).
bool auto_uses_pruned_space(double condition_estimate);
// Whether kAuto runs fp32 rounds with the masked Cholesky (the low rank otherwise), from the same estimate and the
// layer's number of inputs (wide layers only).
bool auto_uses_masked_cholesky(double condition_estimate, int64_t inputs);

// Iterative solver: undamped H whose condition estimate exceeds this counts as singular and is damped.
inline constexpr double kSingularCondition = 1e12;

}  // namespace optima
