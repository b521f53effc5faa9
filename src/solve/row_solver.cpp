// The exact OPTIMA row solver: batched Cholesky on the smaller of each row's kept and pruned systems, refined
// against the fp64 KKT residual. The design is described in include/optima/solve/row_solver.h.
#include "optima/solve/row_solver.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "gather_systems.h"
#include "optima/core/error.h"
#include "solve_common.h"

namespace optima {

namespace {

using solve_detail::BatchedCholesky;

constexpr const char* kWhere = "solve_rows_exact";
// A chunk pads its rows to its largest system; rows join a chunk while their size is within this fraction of the
// chunk's smallest, which bounds the padding's extra factorization work by (1 + 1/32)³ ≈ 1.1; small systems may
// always grow by a few unknowns, which costs less than another chunk.
constexpr int64_t kPadDivisor = 32;
constexpr int64_t kMinPad = 4;
// fp32 layers are probed on this many rows of their first chunk before the rest is attempted in fp32: H's condition
// estimate does not tell every layer fp32 cannot hold (the LayerNorm outputs feeding OPT-125M's attention and fc1
// have a near-null direction spread over all inputs, invisible in the Cholesky diagonal, and fail fp32 on every
// row; fc2, with a larger estimate, does not), and a failed probe costs 1% of a layer where a failed chunk cost up
// to all of it once more.
constexpr size_t kProbeRows = 8;
// Polishing to the undamped optimum stops once its (fp64) recurrence residual is this fraction of the tolerance, so
// that the true residual checked after it is below the tolerance too.
constexpr double kPolishRecurrenceMargin = 0.25;
// Polishing takes RowSolveOptions::max_refinement_steps, and up to this many times as many while some row's fall over
// the last kPolishRateWindow steps projects that it reaches the tolerance within them: each eigenvalue of H_TT at or
// below the damping costs the preconditioned CG about one step, and rows with several needed 11-13 steps where the cap
// was 10 (a Hessian of the unit tests, one seed in 40). Rows whose H_TT is singular stall, and take no more than
// before.
constexpr int kPolishStepFactor = 3;
constexpr int kPolishRateWindow = 4;

// Everything one attempt (one damping value) needs about the layer.
struct Layer {
  at::Tensor weight;    // dense weight, caller's dtype
  at::Tensor pruned;    // bool [out, n]
  at::Tensor h;         // damped fp64 Hessian
  at::Tensor g;         // fp64 H⁻¹, when some row uses it
  at::Tensor h32, g32;  // fp32 copies for the fp32 gathers
  int64_t n = 0;
  double damping = 0;   // absolute damping in h: the undamped residual subtracts it again
  bool polish = false;  // damped, though H as stated is definite: rows are polished to its optimum (polish_to_undamped)
};

// The damped refinement's target, whose reaching decides whether fp32 held a chunk. A chunk that will be polished needs
// its damped optimum only as closely as the polishing's own tolerance, since the polishing starts from it (fc2 of
// OPT-125M-shaped models: one fp32 step fewer of about six).
double refine_target(const Layer& layer, const RowSolveOptions& options) {
  return layer.polish ? std::max(options.refinement_tolerance, options.undamped_tolerance)
                      : options.refinement_tolerance;
}

// One group of rows solved with one batched factorization.
struct Chunk {
  std::vector<int64_t> rows;   // row indices into the layer
  std::vector<int64_t> sizes;  // each row's system size (|S| through G, |T| through H)
  int64_t m = 0;               // the largest size: the batch's matrices are [m, m]
  bool through_g = false;
};

struct ChunkOutcome {
  bool factored = true;     // false: an fp64 factorization failed (damping must rise)
  double refined = 0;       // the damped refinement's residual, against refine_target
  double kkt = 0;           // against the problem each row's answer solves (undamped where polished)
  double kkt_undamped = 0;  // against the undamped H
  int64_t steps = 0;
  int64_t damped_rows = 0;  // rows whose answer stays the damped optimum (polishing did not reach the tolerance)
};

// Where the damped optimum is polished to the undamped one (see polish_to_undamped).
struct Polished {
  at::Tensor delta;     // [b, n]: the polished δ for rows that reached the tolerance, the damped one elsewhere
  at::Tensor reached;   // bool [b]
  at::Tensor residual;  // [b]: the undamped relative residual of the polished δ (of `delta` where reached)
  int64_t steps = 0;    // CG steps taken (the history's length)
};

// M⁻¹ρ for residuals ρ [b, n] supported on each row's kept set, with M the chunk's damped H_TT (its factors).
using InverseApply = std::function<at::Tensor(const at::Tensor&)>;

// Whether some row above `goal` may still reach it within `max_steps` in all, judged by each row's fall over the
// last kPolishRateWindow steps, or since the first while there are fewer (`history`: each step's [b] relative
// residuals).
bool polish_may_reach(const std::vector<at::Tensor>& history, double goal, int max_steps) {
  const size_t steps = history.size();
  const at::Tensor& now = history.back();
  if (steps < 2) return (now > goal).any().item<bool>();
  // The fall over the window, or since the first step while there are fewer.
  const size_t window = std::min(steps - 1, static_cast<size_t>(kPolishRateWindow));
  const at::Tensor fall = now / history[steps - 1 - window];
  const at::Tensor steps_needed =
      at::log(goal / now) / at::log(fall) * static_cast<double>(window);  // positive where falling toward the goal
  const at::Tensor hopeful =
      (now > goal) & (fall < 1) & (steps_needed <= static_cast<double>(max_steps) - static_cast<double>(steps));
  return hopeful.any().item<bool>();
}

// The damped optimum δ₀ (from the chunk's factors of H_TT + dI) is not the problem's own: its undamped KKT residual is
// about d·||δ_T|| / ||(H₀ w)_T|| (1e-7 to 1e-5 at the default damping). Conjugate gradients on H₀_TT e = −(H₀ δ₀)_T
// with the damped factors as preconditioner reach the undamped optimum in a few steps where H₀_TT is definite: the
// preconditioned spectrum λ / (λ + d) clusters at 1 except for the few eigenvalues near or below d. Rows whose
// undamped residual does not reach `tolerance` (H₀_TT singular, or nearly so: see polish_may_reach) keep δ₀: the
// damping stays only where H needs it. Products in fp64 with the damped H (h) less d·v.
Polished polish_to_undamped(const at::Tensor& h, double damping, const at::Tensor& kept_d, const at::Tensor& delta0,
                            const at::Tensor& undamped_rho0, const at::Tensor& scale, double tolerance, int min_steps,
                            int max_steps, const InverseApply& inverse_apply, double product_flops,
                            RowSolveResult& result) {
  const auto undamped_product = [&](const at::Tensor& v) {  // (H₀ v)_T
    result.flops += product_flops;
    return at::matmul(v, h).sub_(v, damping).mul_(kept_d);
  };
  const auto worst = [&](const at::Tensor& rho) { return solve_detail::relative_residual(rho, scale); };
  at::Tensor res = -undamped_rho0;  // −(H₀ δ₀)_T: the correction's right-hand side
  at::Tensor e = at::zeros_like(delta0);
  at::Tensor p = inverse_apply(res);
  at::Tensor rz = at::linalg_vecdot(res, p);
  // The recurrence is fp64 throughout; a quarter of the tolerance leaves room for its drift from the true residual.
  const double goal = kPolishRecurrenceMargin * tolerance;
  std::vector<at::Tensor> history;  // each step's recurrence residuals, per row
  for (int step = 0; step < max_steps; ++step) {
    const at::Tensor q = undamped_product(p);
    const at::Tensor pq = at::linalg_vecdot(p, q);
    const at::Tensor alpha = at::where(pq > 0, rz / pq, at::zeros_like(pq)).unsqueeze(1);
    e.addcmul_(p, alpha);
    res.addcmul_(q, alpha, -1.0);
    history.push_back(worst(res));
    if (!(history.back().max().item<double>() > goal)) break;
    if (step + 1 >= min_steps && !polish_may_reach(history, goal, max_steps)) break;
    const at::Tensor z = inverse_apply(res);
    const at::Tensor rz_next = at::linalg_vecdot(res, z);
    const at::Tensor beta = at::where(rz > 0, rz_next / rz, at::zeros_like(rz)).unsqueeze(1);
    p = z.addcmul_(p, beta);
    rz = rz_next;
  }
  const at::Tensor candidate = delta0 + e;
  Polished out;
  out.residual = worst(undamped_product(candidate));
  out.reached = out.residual <= tolerance;
  out.delta = at::where(out.reached.unsqueeze(1), candidate, delta0);
  out.steps = static_cast<int64_t>(history.size());  // one entry per step taken
  return out;
}

at::Tensor index_tensor(const std::vector<int64_t>& v, const at::Device& device) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(device);
}

// Bytes one row of a chunk with m-sized systems holds at its peak: the gathered matrix and its factor, plus the
// row-long work vectors (weights, mask, deltas, residuals, products, indices).
int64_t bytes_per_row(int64_t m, int64_t n, bool fp32) {
  const int64_t elem = fp32 ? 4 : 8;
  return 2 * elem * m * m + 12 * int64_t{8} * n;
}

// Solves one chunk in the given precision, writes its rows into `out` and returns its KKT residual.
ChunkOutcome solve_chunk(const Layer& layer, const Chunk& chunk, bool fp32, const RowSolveOptions& options,
                         at::Tensor& workspace, at::Tensor& out, RowSolveResult& result) {
  ChunkOutcome outcome;
  const at::Device device = layer.weight.device();
  const int64_t b = static_cast<int64_t>(chunk.rows.size()), n = layer.n, m = chunk.m;
  const at::Tensor rows = index_tensor(chunk.rows, device);
  const at::Tensor w = layer.weight.index_select(0, rows).to(at::kDouble);
  const at::Tensor pruned = layer.pruned.index_select(0, rows);
  const at::Tensor kept = pruned.logical_not();
  const at::Tensor kept_d = kept.to(at::kDouble);
  const bool padded = std::any_of(chunk.sizes.begin(), chunk.sizes.end(), [m](int64_t s) { return s != m; });

  // idx[r, :] lists row r's unknowns (pruned columns through G, kept ones through H) in ascending order; padded
  // positions hold column 0 and are masked out by `invalid`. Built by a scatter to each column's rank in its set.
  const at::Tensor selected = chunk.through_g ? pruned : kept;
  at::Tensor rank = selected.to(at::kLong).cumsum(1).sub_(1);
  rank = at::where(selected, rank, at::full_like(rank, m));  // everything else lands in a dropped column
  at::Tensor idx = at::zeros({b, m + 1}, rank.options());
  idx.scatter_(1, rank, at::arange(n, rank.options()).unsqueeze(0).expand({b, n}));
  idx = idx.narrow(1, 0, m).contiguous();
  at::Tensor invalid;
  if (padded) invalid = at::arange(m, rank.options()).unsqueeze(0) >= index_tensor(chunk.sizes, device).unsqueeze(1);

  const at::Tensor& source = chunk.through_g ? (fp32 ? layer.g32 : layer.g) : (fp32 ? layer.h32 : layer.h);
  BatchedCholesky factor;
  // Padded positions become identity rows and columns with a zero right-hand side: the padded unknowns solve to 0
  // and, the matrix being block diagonal, leave the real ones untouched. The Cholesky reads the lower triangle only.
  outcome.factored = factor.factor(solve_detail::gather_systems(
      source, idx, padded ? index_tensor(chunk.sizes, device) : at::Tensor(), /*lower_only=*/true, &workspace));
  const double fm = static_cast<double>(m);
  result.factor_flops += b * fm * fm * fm / 3;
  result.flops += b * fm * fm * fm / 3;
  if (!outcome.factored) return outcome;
  const double solve_flops = 2.0 * b * fm * fm;
  const double product_flops = 2.0 * b * static_cast<double>(n) * n;

  // Right-hand sides: w_S through G; (H_TS w_S) = (H (w ⊙ pruned))_T through H, one product for the chunk.
  at::Tensor rhs = chunk.through_g ? w.gather(1, idx) : at::matmul(w * pruned, layer.h).gather(1, idx);
  if (!chunk.through_g) result.flops += product_flops;
  if (padded) rhs.masked_fill_(invalid, 0.0);
  at::Tensor x = factor.solve(rhs).to(at::kDouble);
  result.flops += solve_flops;

  // δ = ŵ − w: δ_S = −w_S exactly; δ_T = x through H, or (−G[:, S] z)_T through G.
  at::Tensor delta;
  if (chunk.through_g) {
    at::Tensor z = at::zeros({b, n}, w.options());
    z.scatter_add_(1, idx, x);
    delta = at::where(pruned, -w, -at::matmul(z, layer.g));
    result.flops += product_flops;
  } else {
    delta = -(w * pruned);
    delta.scatter_add_(1, idx, x);
  }

  // Refinement against the fp64 residual ρ_T = (H δ)_T. Its correction c (c_S = 0, H_TT c_T = −ρ_T) comes from
  // the chunk's factors: through H directly; through G from H_TT⁻¹ = G_TT − G_TS G_SS⁻¹ G_ST, that is
  // y = G ρ_T, c_T = (G[:, S] G_SS⁻¹ y_S − y)_T.
  const InverseApply inverse_apply = [&](const at::Tensor& rho) {
    result.flops += solve_flops;
    if (chunk.through_g) {
      const at::Tensor y = at::matmul(rho, layer.g);
      at::Tensor ys = y.gather(1, idx);
      if (padded) ys.masked_fill_(invalid, 0.0);
      at::Tensor z = at::zeros({b, n}, w.options());
      z.scatter_add_(1, idx, factor.solve(ys).to(at::kDouble));
      result.flops += 2 * product_flops;
      return (y - at::matmul(z, layer.g)) * kept_d;
    }
    at::Tensor rt = rho.gather(1, idx);
    if (padded) rt.masked_fill_(invalid, 0.0);
    // Padded unknowns solve to 0, so adding them to column 0 changes nothing.
    return at::zeros({b, n}, w.options()).scatter_add_(1, idx, factor.solve(rt).to(at::kDouble));
  };
  const at::Tensor hw_t = at::matmul(w, layer.h) * kept_d;
  const at::Tensor hw_t_norm = at::linalg_vector_norm(hw_t, 2, {1});
  result.flops += product_flops;
  // Against the undamped H₀ = H − damping·I: (H₀ δ)_T = ρ_T − damping·δ_T, (H₀ w)_T = (H w)_T − damping·w_T.
  const at::Tensor hw0_t_norm =
      layer.damping == 0 ? hw_t_norm : at::linalg_vector_norm(hw_t - layer.damping * w * kept_d, 2, {1});
  // The chunk's answer ŵ = w + δ, pruned entries exactly 0, into `out`.
  const auto write_answer = [&](const at::Tensor& answer_delta) {
    out.index_copy_(0, rows, (w + answer_delta).masked_fill_(pruned, 0.0).to(out.scalar_type()));
  };
  if (layer.polish) {
    // Rows that will be polished need the damped optimum only as the polishing's start, and the polishing's CG,
    // preconditioned with the same factors, takes the first solve's error out together with the damping's: on the
    // out_proj of a random OPT-125M-shaped model (fp32 factors) in at most 5 steps, where refining to the damped
    // optimum (1-4 corrections, mostly 3) and polishing from there (1-3 steps) took up to 7; 11-14% less time.
    // fp32 factors that do not get every row there within max_refinement_steps (judged by the rows' fall from the
    // second step on) are too inexact for this H: the caller solves the chunk again in fp64, as it does where their
    // refinement stalls (on that model's fc1, whose H fp32 cannot hold, the chunk had taken 16 steps in fp32 without
    // that limit, against 8 in fp64). In fp64, a chunk where some row does not get there is refined and polished as
    // below.
    const at::Tensor rho = at::matmul(delta, layer.h) * kept_d;
    result.flops += product_flops;
    const int max_steps = fp32 ? options.max_refinement_steps : kPolishStepFactor * options.max_refinement_steps;
    const Polished direct =
        polish_to_undamped(layer.h, layer.damping, kept_d, delta, rho - layer.damping * delta * kept_d, hw0_t_norm,
                           options.undamped_tolerance, fp32 ? 2 : options.max_refinement_steps, max_steps,
                           inverse_apply, product_flops, result);
    outcome.steps = direct.steps;
    if (direct.reached.all().item<bool>()) {
      outcome.kkt = outcome.kkt_undamped = outcome.refined = direct.residual.max().item<double>();
      write_answer(direct.delta);
      return outcome;
    }
    if (fp32) {
      outcome.refined = std::numeric_limits<double>::infinity();
      return outcome;
    }
  }
  const double target = refine_target(layer, options);
  at::Tensor best_delta, best_rho;
  double best = 0;
  for (int64_t step = 0;; ++step) {
    const at::Tensor rho = at::matmul(delta, layer.h) * kept_d;
    result.flops += product_flops;
    const double worst = solve_detail::relative_residual(rho, hw_t_norm).max().item<double>();
    if (step > 0 && !(worst < best)) {  // no progress (or NaN): keep the best iterate
      delta = best_delta;
      break;
    }
    best_rho = rho;
    const double rate = step > 0 ? worst / best : 0.0;  // contraction of the last correction
    best = worst;
    best_delta = delta;
    outcome.steps = step;
    if (worst <= target || step >= options.max_refinement_steps) break;
    // fp32 factors that contract too slowly to reach the tolerance in the steps left: stop now, the chunk goes to
    // fp64 anyway (in fp64 every allowed step is taken).
    if (fp32 && step > 0 && std::log(target / worst) / std::log(rate) > options.max_refinement_steps - step) break;
    delta = delta - inverse_apply(rho);
  }
  outcome.refined = best;
  // Non-finite numbers after a factorization that succeeded mean it was too close to singular: damp more.
  if (!std::isfinite(best)) {
    outcome.factored = false;
    return outcome;
  }
  const at::Tensor damped_residual = solve_detail::relative_residual(best_rho, hw_t_norm);
  at::Tensor solved_residual = damped_residual;  // of the problem each row's answer solves
  const at::Tensor undamped_rho = best_rho - layer.damping * delta * kept_d;
  at::Tensor undamped_residual = solve_detail::relative_residual(undamped_rho, hw0_t_norm);
  if (layer.polish && !(fp32 && best > target)) {
    const Polished polished =
        polish_to_undamped(layer.h, layer.damping, kept_d, delta, undamped_rho, hw0_t_norm, options.undamped_tolerance,
                           options.max_refinement_steps, kPolishStepFactor * options.max_refinement_steps,
                           inverse_apply, product_flops, result);
    delta = polished.delta;
    undamped_residual = at::where(polished.reached, polished.residual, undamped_residual);
    solved_residual = at::where(polished.reached, polished.residual, damped_residual);
    outcome.damped_rows = polished.reached.logical_not().sum().item<int64_t>();
  } else if (layer.damping > 0) {
    outcome.damped_rows = b;
  }
  outcome.kkt = solved_residual.max().item<double>();
  outcome.kkt_undamped = undamped_residual.max().item<double>();
  write_answer(delta);
  return outcome;
}

// Groups the rows that need a solve into chunks: by branch, sorted by system size, bounded by the memory budget
// and the padding limit.
std::vector<Chunk> plan_chunks(const at::Tensor& pruned, const RowSolveOptions& options, bool* any_through_g) {
  const int64_t out = pruned.size(0), n = pruned.size(1);
  const at::Tensor counts = pruned.sum(1).to(at::kLong).cpu().contiguous();
  const int64_t* k = counts.data_ptr<int64_t>();
  std::vector<int64_t> via_g, via_h;
  for (int64_t r = 0; r < out; ++r) {
    if (k[r] == 0 || k[r] == n) continue;  // nothing to solve: w kept as is, or the row is all zero
    (k[r] <= n - k[r] ? via_g : via_h).push_back(r);
  }
  *any_through_g = !via_g.empty();
  const bool fp32 = options.precision == SolvePrecision::kFloat32Refined;
  std::vector<Chunk> chunks;
  for (int branch = 0; branch < 2; ++branch) {
    std::vector<int64_t>& rows = branch == 0 ? via_g : via_h;
    auto size_of = [&](int64_t r) { return branch == 0 ? k[r] : n - k[r]; };
    std::stable_sort(rows.begin(), rows.end(), [&](int64_t a, int64_t b) { return size_of(a) < size_of(b); });
    size_t i = 0;
    while (i < rows.size()) {
      Chunk c;
      c.through_g = branch == 0;
      const int64_t smallest = size_of(rows[i]);
      const int64_t limit = smallest + std::max(smallest / kPadDivisor, kMinPad);
      while (i < rows.size()) {
        const int64_t s = size_of(rows[i]);
        const int64_t cap = std::max<int64_t>(1, options.memory_budget_bytes / bytes_per_row(s, n, fp32));
        if (!c.rows.empty() && (s > limit || static_cast<int64_t>(c.rows.size()) + 1 > cap)) break;
        c.rows.push_back(rows[i]);
        c.sizes.push_back(s);
        c.m = s;
        ++i;
      }
      chunks.push_back(std::move(c));
    }
  }
  return chunks;
}

}  // namespace

RowSolveResult solve_rows_exact(const at::Tensor& dense_weight, const at::Tensor& pruned, const at::Tensor& hessian,
                                const RowSolveOptions& options) {
  solve_detail::validate_inputs(kWhere, dense_weight, pruned, hessian, at::Tensor());
  solve_detail::validate_options(kWhere, options.damp, options.memory_budget_bytes);
  solve_detail::require_finite(kWhere, "weight", dense_weight);
  const solve_detail::PreparedHessian prepared = solve_detail::prepare_hessian(kWhere, hessian);
  const bool fp32 = options.precision == SolvePrecision::kFloat32Refined;
  const int64_t n = dense_weight.size(1);

  bool any_through_g = false;
  const std::vector<Chunk> chunks = plan_chunks(pruned, options, &any_through_g);

  // One buffer for every chunk's gathered systems, sized for the largest, reused across chunks and damping attempts
  // (see gather_systems.h for why). The fp64 one serves fp64 solves and fp32 chunks that fall back to fp64.
  int64_t capacity = 0;
  for (const Chunk& c : chunks) capacity = std::max(capacity, static_cast<int64_t>(c.rows.size()) * c.m * c.m);
  at::Tensor workspace32, workspace64;
  (fp32 ? workspace32 : workspace64) =
      at::empty({capacity}, dense_weight.options().dtype(fp32 ? at::kFloat : at::kDouble));

  RowSolveResult result;
  result.dead_inputs = prepared.dead_inputs;
  result.mean_diag = prepared.mean_diag;
  double damping = options.damp * prepared.mean_diag;
  // The damping stays in the answer only where H is singular, the iterative solver's rule (kSingularCondition);
  // elsewhere it only makes the factorizations safe, and the rows are polished to H's own optimum.
  const bool polish = options.undamped_tolerance > 0 && (damping > 0 || options.max_damping_retries > 0) &&
                      solve_detail::spd_condition_estimate(prepared.h) <= kSingularCondition;
  for (int attempt = 0;; ++attempt) {
    result.damping = damping;
    Layer layer;
    layer.weight = dense_weight;
    layer.pruned = pruned;
    layer.n = n;
    layer.h = prepared.h.clone();
    layer.h.diagonal().add_(damping);
    layer.damping = damping;
    layer.polish = polish && damping > 0;
    // Rows with nothing pruned keep w; rows with everything pruned are 0; the others are overwritten below.
    at::Tensor out = dense_weight.masked_fill(pruned, 0);
    double kkt = 0, kkt_undamped = 0;
    int64_t steps = 0, fallback_rows = 0, damped_rows = 0;
    bool factored = true;
    const double fn = static_cast<double>(n);
    if (any_through_g) {
      const auto started = std::chrono::steady_clock::now();
      layer.g = solve_detail::spd_inverse(layer.h, &result.condition_estimate);
      factored = layer.g.defined();
      result.factor_flops += fn * fn * fn / 3;
      result.flops += fn * fn * fn;                      // Cholesky, then the inverse from it
      if (factored) (void)layer.g.sum().item<double>();  // waits for the device, so that the time below is real
      result.inverse_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    }
    // fp32 factors of a layer this ill-conditioned would fail or refine too slowly: fp64 from the start.
    if (fp32 && factored && !any_through_g) result.condition_estimate = solve_detail::spd_condition_estimate(layer.h);
    result.fp64_predicted = fp32 && factored && predict_fp64(result.condition_estimate);
    if (fp32 && !result.fp64_predicted) {
      layer.h32 = layer.h.to(at::kFloat).contiguous();
      if (layer.g.defined()) layer.g32 = layer.g.to(at::kFloat).contiguous();
    }
    result.chunks = 0;
    result.rows_via_inverse = result.rows_via_kept = 0;
    for (const Chunk& c : chunks)
      (c.through_g ? result.rows_via_inverse : result.rows_via_kept) += static_cast<int64_t>(c.rows.size());
    // Once fp32 failed a chunk of this layer, the rest goes to fp64 directly: the conditioning is the layer's.
    bool fp64_from_now = result.fp64_predicted;
    // (Not when H⁻¹ failed: the damping rises first, and the probe would have no H⁻¹ to gather from.)
    if (factored && fp32 && !fp64_from_now && !chunks.empty() && chunks[0].rows.size() > kProbeRows) {
      Chunk probe = chunks[0];
      probe.rows.resize(kProbeRows);
      probe.sizes.resize(kProbeRows);
      probe.m = *std::max_element(probe.sizes.begin(), probe.sizes.end());
      // Its rows are solved again with their chunk (in fp32 or fp64), so `out` ends up the same either way.
      const ChunkOutcome o = solve_chunk(layer, probe, true, options, workspace32, out, result);
      if (o.factored && !(o.refined <= refine_target(layer, options))) {
        fp64_from_now = true;
        result.fp64_predicted = true;
        fallback_rows += static_cast<int64_t>(kProbeRows);
      }
    }
    for (size_t c = 0; factored && c < chunks.size(); ++c) {
      const int64_t rows = static_cast<int64_t>(chunks[c].rows.size());
      ChunkOutcome o;
      if (fp32 && !fp64_from_now) {
        o = solve_chunk(layer, chunks[c], true, options, workspace32, out, result);
        if (!o.factored || !(o.refined <= refine_target(layer, options))) {
          // fp32 could not hold this chunk's conditioning: the same systems in fp64, so the answer does not change.
          fp64_from_now = true;
          fallback_rows += rows;
          o = solve_chunk(layer, chunks[c], false, options, workspace64, out, result);
        }
      } else {
        fallback_rows += fp32 && !result.fp64_predicted ? rows : 0;
        o = solve_chunk(layer, chunks[c], false, options, workspace64, out, result);
      }
      ++result.chunks;
      factored = o.factored;
      kkt = std::max(kkt, o.kkt);
      kkt_undamped = std::max(kkt_undamped, o.kkt_undamped);
      steps = std::max(steps, o.steps);
      damped_rows += o.damped_rows;
    }
    if (factored) {
      result.weight = out;
      result.kkt_residual = kkt;
      result.kkt_residual_undamped = kkt_undamped;
      result.refinement_steps = steps;
      result.fp64_fallback_rows = fallback_rows;
      result.damped_rows = damped_rows;
      // The damping the answer carries: none once every row was polished to the undamped optimum.
      result.factor_damping = damping;
      result.damping = damped_rows == 0 ? 0.0 : damping;
      return result;
    }
    damping =
        solve_detail::next_retry_damping(kWhere, damping, attempt, options.max_damping_retries, prepared.mean_diag);
    ++result.damping_retries;
  }
}

}  // namespace optima
