// One linear layer's select + reconstruct + measure step (see layer_step.h).
#include "optima/prune/layer_step.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "optima/core/byte_size.h"
#include "optima/core/error.h"
#include "optima/core/resources.h"
#include "optima/core/threads.h"
#include "optima/prune/distributed_steps.h"

namespace optima {

ReconstructSettings ReconstructSettings::from_plan(const PrunePlan& plan) {
  ReconstructSettings s;
  s.method = plan.reconstruct;
  s.solver = plan.qp_solver;
  s.tolerance = plan.qp_tol;
  s.max_iterations = plan.qp_max_iter;
  s.options.damp = plan.qp_damp;
  s.options.undamped_tolerance = plan.qp_tol;
  s.options.precision = plan.qp_precision;
  s.options.memory_budget_bytes = static_cast<int64_t>(parse_byte_size(plan.qp_memory));
  return s;
}

double relative_error(const at::Tensor& dense, const at::Tensor& updated, const at::Tensor& hessian) {
  const at::Tensor h = hessian.to(at::kDouble);
  const at::Tensor w = dense.to(h.device(), at::kDouble);
  const at::Tensor d = w - updated.to(h.device(), at::kDouble);
  const double denominator = (w.mm(h) * w).sum().item<double>();
  const double numerator = (d.mm(h) * d).sum().item<double>();
  return denominator > 0 ? numerator / denominator : 0.0;
}

bool pattern_holds(const at::Tensor& zeros, const SparsityPattern& target) {
  if (target.is_unstructured()) return true;
  const at::Tensor groups = zeros.reshape({zeros.size(0), -1, target.m()}).sum(-1);
  return (groups >= target.n()).all().item<bool>();
}

namespace {

// Runs `step`, prefixing the layer's name to the message of an optima::Error it throws.
template <typename Step>
auto in_layer(const std::string& name, const Step& step) {
  try {
    return step();
  } catch (const Error& e) {
    throw Error(e.kind(), fmt::format("{}: {}", name, e.what()));
  }
}

}  // namespace

LayerPruner::LayerPruner(const PrunePlan& plan, const Distributed& dist)
    : info_(find_selector(plan.method)),
      selector_(make_selector(plan.method, plan.selector_settings())),
      reconstruct_(ReconstructSettings::from_plan(plan)),
      dist_(dist) {}

LayerResult LayerPruner::prune(const at::Tensor& dense, const LayerStats& stats, const SparsityPattern& target,
                               LayerReport& report) const {
  // Below about rows x cols² multiply-adds a layer's work is too small to share between threads (SerialScope).
  const SerialScope serial(dense.size(0) * dense.size(1) * dense.size(1) <= kSerialWorkLimit);
  // The selectors and solvers allocate the same [rows, cols] temporaries step after step (HeapReuseScope).
  const HeapReuseScope heap_reuse;
  auto t0 = SteadyClock::now();
  const Selection selection = in_layer(report.name, [&] { return selector_->select(dense, stats, target); });
  report.seconds_select = seconds_since(t0);
  report.damping = selection.damping;
  report.damping_retries = selection.damping_retries;
  const bool measured = stats.hessian.defined();
  if (measured) report.error_selector = relative_error(dense, selection.weight, stats.hessian);
  at::Tensor final_weight = selection.weight;
  if (reconstruct_.method == Reconstruct::kOptima) {
    t0 = SteadyClock::now();
    // OPTIMA starts from the dense row w, not the selector's updated weights (algorithms.md §6).
    const RowSolveResult r =
        reconstruct(dense.to(at::kFloat), selection.pruned, selection.weight.to(at::kFloat), stats.hessian, report);
    report.qp_iterations = r.iterations;
    report.qp_pruned_space_rounds = r.pruned_space_rounds;
    report.qp_fp64_fallback_rows = r.fp64_fallback_rows;
    report.qp_chunks = r.chunks;
    report.qp_converged = r.converged;
    report.seconds_reconstruct = seconds_since(t0);
    report.kkt_residual = r.kkt_residual;
    report.kkt_residual_undamped = r.kkt_residual_undamped;
    report.qp_fp64_predicted = r.fp64_predicted;
    report.qp_condition_estimate = r.condition_estimate;
    report.qp_input_order = r.input_order;
    report.reconstruct_damping = r.damping;
    final_weight = r.weight;
  }
  report.error_final = measured ? relative_error(dense, final_weight, stats.hessian) : 0.0;
  LayerResult result;
  result.weight = final_weight.masked_fill(selection.pruned, 0).to(dense.scalar_type());
  result.pruned = selection.pruned;
  const at::Tensor zeros = result.weight == 0;
  report.sparsity = zeros.to(at::kDouble).mean().item<double>();
  report.pattern_ok = pattern_holds(zeros, target);
  return result;
}

RowSolveResult LayerPruner::reconstruct(const at::Tensor& dense, const at::Tensor& pruned, const at::Tensor& start,
                                        const at::Tensor& hessian, LayerReport& report) const {
  const ReconstructSettings& s = reconstruct_;
  // auto: one prediction for the whole layer (every process of a job sees the whole mask, so they agree); a CG
  // that would cost more than the exact solver is given up for it (the number of iterations is the uncertain part:
  // 62 on OPT-125M's q_proj and fc1, over 1000 on its out_proj), and so are the later layers of its input site.
  SolverCostPrediction predicted;
  predicted.choice = s.solver == QpSolver::kIterative ? RowSolverKind::kIterative : RowSolverKind::kExact;
  if (s.solver == QpSolver::kAuto) {
    predicted = predict_solver_cost(pruned);
    report.qp_predicted_exact_units = predicted.exact_units;
    report.qp_predicted_iterative_units = predicted.iterative_units;
    if (cg_given_up_sites_.count(report.site) != 0) predicted.choice = RowSolverKind::kExact;
  }
  // A job of many processes solves each process's share of the rows and gathers them.
  const RowSolver solve = [&](const at::Tensor& w_rows, const at::Tensor& pruned_rows, const at::Tensor& start_rows,
                              const RowSolveOptions& options) {
    if (s.solver == QpSolver::kAuto)
      return solve_rows_auto(w_rows, pruned_rows, hessian, start_rows, s.tolerance, s.max_iterations, options,
                             predicted);
    return predicted.choice == RowSolverKind::kIterative
               ? solve_rows_iterative(w_rows, pruned_rows, hessian, start_rows, s.tolerance, s.max_iterations, options)
               : solve_rows_exact(w_rows, pruned_rows, hessian, options);
  };
  const std::string& name = report.name;
  RowSolveResult r =
      in_layer(name, [&] { return solve_rows_shared(dist_, solve, dense, pruned, start, s.options, name); });
  report.qp_abandoned_iterations = r.abandoned_iterations;
  if (r.abandoned_iterations > 0) cg_given_up_sites_.insert(report.site);
  report.qp_solver =
      predicted.choice == RowSolverKind::kIterative && r.abandoned_iterations == 0 ? "iterative" : "exact";
  if (!r.converged)
    spdlog::warn(
        "{}: conjugate gradients stopped after {} iterations at relative KKT residual {:.2e} "
        "(--qp-tol {:.1e}; raise --qp-max-iter, or use --qp-solver exact)",
        name, r.iterations, r.kkt_residual, s.tolerance);
  return r;
}

}  // namespace optima
