// The exact OPTIMA row solver: batched Cholesky on the smaller of each row's kept and pruned systems, refined
// against the fp64 KKT residual. The design is described in include/optima/solve/row_solver.h.
#include "optima/solve/row_solver.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
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

// Everything one attempt (one damping value) needs about the layer.
struct Layer {
  at::Tensor weight;    // dense weight, caller's dtype
  at::Tensor pruned;    // bool [out, n]
  at::Tensor h;         // damped fp64 Hessian
  at::Tensor g;         // fp64 H⁻¹, when some row uses it
  at::Tensor h32, g32;  // fp32 copies for the fp32 gathers
  int64_t n = 0;
  double damping = 0;  // absolute damping in h: the undamped residual subtracts it again
};

// One group of rows solved with one batched factorization.
struct Chunk {
  std::vector<int64_t> rows;   // row indices into the layer
  std::vector<int64_t> sizes;  // each row's system size (|S| through G, |T| through H)
  int64_t m = 0;               // the largest size: the batch's matrices are [m, m]
  bool through_g = false;
};

struct ChunkOutcome {
  bool factored = true;  // false: an fp64 factorization failed (damping must rise)
  double kkt = 0;
  double kkt_undamped = 0;  // the same against the undamped H
  int64_t steps = 0;
};

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
  const at::Tensor hw_t = at::matmul(w, layer.h) * kept_d;
  const at::Tensor hw_t_norm = at::linalg_vector_norm(hw_t, 2, {1});
  result.flops += product_flops;
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
    if (worst <= options.refinement_tolerance || step >= options.max_refinement_steps) break;
    // fp32 factors that contract too slowly to reach the tolerance in the steps left: stop now, the chunk goes to
    // fp64 anyway (in fp64 every allowed step is taken).
    if (fp32 && step > 0 &&
        std::log(options.refinement_tolerance / worst) / std::log(rate) > options.max_refinement_steps - step)
      break;
    if (chunk.through_g) {
      const at::Tensor y = at::matmul(rho, layer.g);
      at::Tensor ys = y.gather(1, idx);
      if (padded) ys.masked_fill_(invalid, 0.0);
      at::Tensor z = at::zeros({b, n}, w.options());
      z.scatter_add_(1, idx, factor.solve(ys).to(at::kDouble));
      delta = delta + (at::matmul(z, layer.g) - y) * kept_d;
      result.flops += 2 * product_flops;
    } else {
      at::Tensor rt = rho.gather(1, idx);
      if (padded) rt.masked_fill_(invalid, 0.0);
      delta = delta.scatter_add(1, idx, -factor.solve(rt).to(at::kDouble));
    }
    result.flops += solve_flops;
  }
  outcome.kkt = best;
  // Against the undamped H₀ = H − damping·I: (H₀ δ)_T = ρ_T − damping·δ_T, (H₀ w)_T = (H w)_T − damping·w_T.
  outcome.kkt_undamped = layer.damping == 0 ? best
                                            : solve_detail::relative_residual(
                                                  best_rho - layer.damping * delta * kept_d,
                                                  at::linalg_vector_norm(hw_t - layer.damping * w * kept_d, 2, {1}))
                                                  .max()
                                                  .item<double>();
  // Non-finite numbers after a factorization that succeeded mean it was too close to singular: damp more.
  if (!std::isfinite(best)) {
    outcome.factored = false;
    return outcome;
  }
  out.index_copy_(0, rows, (w + delta).masked_fill_(pruned, 0.0).to(out.scalar_type()));
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
  if (!(options.damp >= 0)) fail_usage(fmt::format("{}: damping must be >= 0, found {}", kWhere, options.damp));
  if (options.memory_budget_bytes <= 0)
    fail_usage(fmt::format("{}: memory budget must be positive, found {}", kWhere, options.memory_budget_bytes));
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
  for (int attempt = 0;; ++attempt) {
    result.damping = damping;
    Layer layer;
    layer.weight = dense_weight;
    layer.pruned = pruned;
    layer.n = n;
    layer.h = prepared.h.clone();
    layer.h.diagonal().add_(damping);
    layer.damping = damping;
    // Rows with nothing pruned keep w; rows with everything pruned are 0; the others are overwritten below.
    at::Tensor out = dense_weight.masked_fill(pruned, 0);
    double kkt = 0, kkt_undamped = 0;
    int64_t steps = 0, fallback_rows = 0;
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
      if (o.factored && !(o.kkt <= options.refinement_tolerance)) {
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
        if (!o.factored || !(o.kkt <= options.refinement_tolerance)) {
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
    }
    if (factored) {
      result.weight = out;
      result.kkt_residual = kkt;
      result.kkt_residual_undamped = kkt_undamped;
      result.refinement_steps = steps;
      result.fp64_fallback_rows = fallback_rows;
      return result;
    }
    damping =
        solve_detail::next_retry_damping(kWhere, damping, attempt, options.max_damping_retries, prepared.mean_diag);
    ++result.damping_retries;
  }
}

}  // namespace optima
