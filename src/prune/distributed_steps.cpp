// Pooled statistics and shared reconstruction rows for a job of many processes (see distributed_steps.h).
#include "optima/prune/distributed_steps.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

namespace optima {

void pool_statistics(const Distributed& dist, InputStatistics& stats, std::string_view what) {
  if (!dist.active()) return;
  stats.pool([&](std::vector<at::Tensor>& parts) { dist.all_reduce(parts, ReduceOp::kSum, what); });
}

RowSolveResult solve_rows_shared(const Distributed& dist, const RowSolver& solve, const at::Tensor& dense,
                                 const at::Tensor& pruned, const at::Tensor& start, const RowSolveOptions& options,
                                 std::string_view what) {
  if (!dist.active()) return solve(dense, pruned, start, options);
  const int64_t rows = dense.size(0);
  const auto [first, last] = dist.share(rows);
  auto solve_share = [&, first = first, last = last](const RowSolveOptions& o) {
    if (last > first)
      return solve(dense.slice(0, first, last), pruned.slice(0, first, last),
                   start.defined() ? start.slice(0, first, last) : start, o);
    RowSolveResult none;  // more processes than rows
    none.weight = at::empty({0, dense.size(1)}, dense.options());
    return none;
  };
  RowSolveResult r = solve_share(options);
  const int64_t own_retries = r.damping_retries;

  // Every process factors with the largest damping any needed, so that an answer does not depend on the row share.
  const double damping = dist.all_reduce({r.factor_damping}, ReduceOp::kMax, fmt::format("{}: damping", what))[0];
  if (last > first && damping > r.factor_damping * (1 + 1e-12) && r.mean_diag > 0) {
    RowSolveOptions again = options;
    again.damp = damping / r.mean_diag;
    const RowSolveResult before = r;
    r = solve_share(again);
    r.damping_retries = own_retries;
    r.refinement_steps = std::max(r.refinement_steps, before.refinement_steps);
  }

  const std::vector<double> most =
      dist.all_reduce({r.kkt_residual, static_cast<double>(r.iterations), static_cast<double>(r.refinement_steps),
                       static_cast<double>(own_retries), static_cast<double>(r.dead_inputs), r.inverse_seconds,
                       r.damping, r.converged ? 0.0 : 1.0, r.mean_diag, r.kkt_residual_undamped,
                       r.fp64_predicted ? 1.0 : 0.0, r.condition_estimate, static_cast<double>(r.pruned_space_rounds),
                       static_cast<double>(r.abandoned_iterations), r.factor_damping},
                      ReduceOp::kMax, fmt::format("{}: solver figures", what));
  const std::vector<double> sums =
      dist.all_reduce({static_cast<double>(r.fp64_fallback_rows), static_cast<double>(r.chunks),
                       static_cast<double>(r.rows_via_inverse), static_cast<double>(r.rows_via_kept), r.flops,
                       r.factor_flops, static_cast<double>(r.damped_rows)},
                      ReduceOp::kSum, fmt::format("{}: solver counters", what));
  RowSolveResult all;
  all.weight = dist.all_gather_shares(r.weight, rows, fmt::format("{}: reconstructed rows", what));
  all.kkt_residual = most[0];
  all.iterations = static_cast<int64_t>(most[1]);
  all.refinement_steps = static_cast<int64_t>(most[2]);
  all.damping_retries = static_cast<int64_t>(most[3]);
  all.dead_inputs = static_cast<int64_t>(most[4]);
  all.inverse_seconds = most[5];
  all.damping = most[6];
  all.converged = most[7] == 0.0;
  all.mean_diag = most[8];
  all.kkt_residual_undamped = most[9];
  all.fp64_predicted = most[10] != 0.0;
  all.condition_estimate = most[11];
  all.pruned_space_rounds = static_cast<int64_t>(most[12]);
  all.abandoned_iterations = static_cast<int64_t>(most[13]);  // a process that gave its CG up: its rows went exact
  all.factor_damping = most[14];
  all.fp64_fallback_rows = static_cast<int64_t>(sums[0]);
  all.chunks = static_cast<int64_t>(sums[1]);
  all.rows_via_inverse = static_cast<int64_t>(sums[2]);
  all.rows_via_kept = static_cast<int64_t>(sums[3]);
  all.flops = sums[4];
  all.factor_flops = sums[5];
  all.damped_rows = static_cast<int64_t>(sums[6]);
  // Each process's probe picks the order for its own rows (choose_masked_order); the report shows this one's.
  all.input_order = r.input_order;
  return all;
}

}  // namespace optima
