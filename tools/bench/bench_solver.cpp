// Benchmark of the exact OPTIMA row solver (not a test): the machine's ATen matmul and batched Cholesky rates,
// a damping study that justifies the default, and solve_rows_exact on the layer shapes of OPT-125M and LLaMA-7B
// (50% unstructured and 2:4, fp64 and fp32-refined), extrapolated from a chunk of rows where a whole layer would
// take too long. Writes one JSON document to the path given as its argument (stdout when none).
//
// Built by scripts/bench_solver with g++ (no CMake target): it links the solver sources directly.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <fmt/format.h>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "optima/core/defaults.h"
#include "optima/io/checkpoint.h"
#include "optima/io/safetensors.h"
#include "optima/io/tensor.h"
#include "optima/select/selector.h"
#include "optima/solve/row_solver.h"
#include "solve/masked_cholesky.h"
#include "solve/solve_common.h"

namespace {

using nlohmann::json;
using optima::RowSolveOptions;
using optima::RowSolveResult;
using optima::SolvePrecision;

double seconds_of(const std::function<void()>& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Best of `reps` runs after one warm-up.
double best_seconds(const std::function<void()>& fn, int reps) {
  fn();
  double best = 1e300;
  for (int i = 0; i < reps; ++i) best = std::min(best, seconds_of(fn));
  return best;
}

void note(const std::string& line) {
  std::cerr << "[bench_solver] " << line << std::endl;
}

json machine_rates() {
  json rates = json::object();
  for (at::ScalarType type : {at::kDouble, at::kFloat}) {
    const std::string name = type == at::kDouble ? "fp64" : "fp32";
    const int64_t n = 2048;
    const at::Tensor a = at::randn({n, n}, at::TensorOptions().dtype(type));
    const double t = best_seconds([&] { (void)at::matmul(a, a); }, 3);
    rates["matmul_" + name + "_gflops"] = 2.0 * n * n * n / t / 1e9;
    const int64_t big = 4096;
    const at::Tensor x = at::randn({big, big}, at::TensorOptions().dtype(type));
    const at::Tensor spd = at::matmul(x, x.t()) + big * at::eye(big, x.options());
    const double tc = best_seconds([&] { (void)at::linalg_cholesky_ex(spd); }, 1);
    rates["cholesky_single_4096_" + name + "_gflops"] = big * 1.0 * big * big / 3 / tc / 1e9;
    json batched = json::array();
    for (auto [m, b] : std::vector<std::pair<int64_t, int64_t>>{{192, 128}, {384, 64}, {1536, 4}, {2048, 2}}) {
      const at::Tensor y = at::randn({b, m, m}, x.options());
      const at::Tensor batch = at::matmul(y, y.transpose(1, 2)) + m * at::eye(m, x.options());
      const double flops = b * 1.0 * m * m * m / 3;
      const double t_aten = best_seconds([&] { (void)at::linalg_cholesky_ex(batch); }, 2);
      // The solver's factorization (in place where LibTorch exports LAPACK): a fresh copy for each of the 3 runs.
      optima::solve_detail::BatchedCholesky split;
      std::vector<at::Tensor> copies = {batch.clone(), batch.clone(), batch.clone()};
      size_t next = 0;
      const double t_split = best_seconds([&] { (void)split.factor(copies.at(next++)); }, 2);
      const double t_bmm = best_seconds([&] { (void)at::bmm(batch, batch); }, 2);
      batched.push_back({{"m", m},
                         {"batch", b},
                         {"aten_one_call_gflops", flops / t_aten / 1e9},
                         {"per_thread_slices_gflops", flops / t_split / 1e9},
                         {"bmm_gflops", 6 * flops / t_bmm / 1e9}});
    }
    rates["batched_cholesky_" + name] = batched;
    rates["solver_factors_in_place_with_lapack"] = optima::solve_detail::BatchedCholesky::uses_lapack_in_place();
    note("rates " + name + ": " + rates.dump());
  }
  return rates;
}

// LLM-like Hessian: correlated inputs with a few outlier features, scaled like SparseGPT's 2/n Σ xxᵀ. Up to 4096
// inputs it is a Gram matrix of `tokens` samples (rank-deficient when tokens < n); wider, where forming a full-rank
// Gram matrix would take minutes, diag(s) (I + 0.3 U Uᵀ / k) diag(s) with the same feature scales.
at::Tensor llm_like_hessian(int64_t n, int64_t tokens, at::ScalarType type) {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor scale = at::exp(0.7 * at::randn({n}, opts));
  scale.narrow(0, 0, std::max<int64_t>(1, n / 128)).mul_(30);
  const int64_t k = std::min<int64_t>(64, n);
  if (n > 4096) {
    const at::Tensor u = at::randn({n, k}, opts);
    at::Tensor c = at::matmul(u, u.t()).mul_(0.3 / k);
    c.diagonal().add_(1.0);
    return (c * scale.unsqueeze(0) * scale.unsqueeze(1)).to(type);
  }
  const at::Tensor x =
      (at::randn({tokens, n}, opts) + at::matmul(at::randn({tokens, k}, opts), at::randn({k, n}, opts)) * 0.3) * scale;
  return (at::matmul(x.t(), x) * (2.0 / tokens)).to(type);
}

at::Tensor matrix_magnitude_mask(const at::Tensor& w, double sparsity) {
  const at::Tensor a = w.abs().flatten();
  const int64_t index = static_cast<int64_t>(a.numel() * sparsity);
  const double threshold = std::get<0>(at::kthvalue(a, index + 1)).item<double>();
  return w.abs() <= threshold;
}

at::Tensor two_four_mask(const at::Tensor& w) {
  const at::Tensor groups = w.abs().reshape({w.size(0), w.size(1) / 4, 4});
  const at::Tensor smallest = std::get<1>(groups.topk(2, 2, /*largest=*/false));
  return at::zeros_like(groups, groups.options().dtype(at::kBool)).scatter_(2, smallest, true).reshape(w.sizes());
}

double objective(const at::Tensor& what, const at::Tensor& w, const at::Tensor& h) {
  const at::Tensor d = what.to(at::kDouble) - w.to(at::kDouble);
  return (at::matmul(d, h.to(at::kDouble)) * d).sum().item<double>();
}

// Objective under the undamped Hessian, retries and fp32 behaviour as the damping grows.
json damping_study() {
  json study = json::array();
  const int64_t n = 768, out = 256;
  for (int64_t tokens : {8192, 512}) {
    const at::Tensor h = llm_like_hessian(n, tokens, at::kFloat);
    const at::Tensor w = at::randn({out, n}) * 0.02;
    const at::Tensor mask = matrix_magnitude_mask(w, 0.5);
    const double pruned_only = objective(w.masked_fill(mask, 0), w, h);
    json rows = json::array();
    double best = 1e300;
    std::vector<json> entries;
    for (double damp : {0.0, 1e-8, 1e-6, 1e-4, 1e-2}) {
      json e = {{"damp", damp}};
      for (SolvePrecision precision : {SolvePrecision::kFloat64, SolvePrecision::kFloat32Refined}) {
        const std::string name = precision == SolvePrecision::kFloat64 ? "fp64" : "fp32_refined";
        RowSolveOptions options;
        options.damp = damp;
        options.precision = precision;
        RowSolveResult r;
        const double t = seconds_of([&] { r = optima::solve_rows_exact(w, mask, h, options); });
        const double obj = objective(r.weight, w, h);
        if (precision == SolvePrecision::kFloat64) best = std::min(best, obj);
        e[name] = {{"seconds", t},
                   {"objective", obj},
                   {"damping_retries", r.damping_retries},
                   {"damping_used_relative", r.damping / h.diagonal().to(at::kDouble).mean().item<double>()},
                   {"kkt_residual", r.kkt_residual},
                   {"refinement_steps", r.refinement_steps},
                   {"fp64_fallback_rows", r.fp64_fallback_rows}};
      }
      entries.push_back(e);
    }
    for (json& e : entries) {
      for (const char* name : {"fp64", "fp32_refined"})
        e[name]["objective_excess_vs_best"] = e[name]["objective"].get<double>() / best - 1;
      rows.push_back(e);
    }
    const at::Tensor eig = at::linalg_eigvalsh(h.to(at::kDouble));
    study.push_back({{"n", n},
                     {"rows", out},
                     {"tokens", tokens},
                     {"hessian_cond", eig.max().item<double>() / std::max(eig.min().item<double>(), 1e-300)},
                     {"eig_max_over_mean_diag", eig.max().item<double>() / h.diagonal().mean().item<double>()},
                     {"objective_masked_dense", pruned_only},
                     {"by_damp", rows}});
    note("damping tokens=" + std::to_string(tokens) + ": " + study.back().dump());
  }
  return study;
}

struct Shape {
  std::string model, name;
  int64_t out, in;
  int64_t rows;  // rows timed (all when == out); 0: reuse the previous shape's per-row timing (same input size)
  std::vector<std::string> variants;
};

json layer_benchmarks(const std::string& only_model) {
  const std::vector<std::string> all = {"unstructured50/fp64", "unstructured50/fp32_refined", "2:4/fp64",
                                        "2:4/fp32_refined"};
  const std::vector<Shape> shapes = {
      {"OPT-125M", "self_attn.{q,k,v,out}_proj", 768, 768, 768, all},
      {"OPT-125M", "fc1", 3072, 768, 3072, all},
      {"OPT-125M", "fc2", 768, 3072, 96, all},
      {"LLaMA-7B", "self_attn.{q,k,v,o}_proj", 4096, 4096, 32, all},
      {"LLaMA-7B", "mlp.{gate,up}_proj", 11008, 4096, 0, all},
      {"LLaMA-7B", "mlp.down_proj", 4096, 11008, 4, {"2:4/fp32_refined"}},
  };
  json results = json::array();
  at::Tensor h;
  int64_t h_in = 0;
  for (const Shape& s : shapes) {
    if (!only_model.empty() && s.model != only_model) continue;
    if (s.rows == 0) {
      // Same input size as the shape before: the per-row cost and H⁻¹ are the same; only the row count differs.
      const size_t count = results.size();
      for (size_t i = count - s.variants.size(); i < count; ++i) {
        json e = results[i];
        const double per_row = e["per_row_seconds"].get<double>();
        e["layer"] = s.name;
        e["shape"] = {s.out, s.in};
        e["layer_seconds"] = e["inverse_seconds"].get<double>() + per_row * s.out;
        e["extrapolated"] = true;
        e["timing_from"] = results[i]["layer"];
        note(e.dump());
        results.push_back(e);
      }
      continue;
    }
    if (h_in != s.in) {
      h = at::Tensor();
      h = llm_like_hessian(s.in, 2 * s.in, at::kFloat);
      h_in = s.in;
    }
    const at::Tensor w = at::randn({s.rows, s.in}) * 0.02;
    for (const std::string& variant : s.variants) {
      const bool nm = variant.rfind("2:4", 0) == 0;
      const bool fp32 = variant.find("fp32") != std::string::npos;
      // The per-matrix threshold of the full layer is about the median of |w| for Gaussian weights, which the
      // subset's own median estimates.
      const at::Tensor mask = nm ? two_four_mask(w) : matrix_magnitude_mask(w, 0.5);
      RowSolveOptions options;
      options.precision = fp32 ? SolvePrecision::kFloat32Refined : SolvePrecision::kFloat64;
      RowSolveResult r;
      const double t = seconds_of([&] { r = optima::solve_rows_exact(w, mask, h, options); });
      // The layer-wide part (H⁻¹, timed by the solver) is paid once; the rest scales with the rows.
      const double t_inverse = r.inverse_seconds;
      const double per_row = std::max(0.0, t - t_inverse) / s.rows;
      const double layer_seconds = s.rows == s.out ? t : t_inverse + per_row * s.out;
      json e = {{"model", s.model},
                {"layer", s.name},
                {"shape", {s.out, s.in}},
                {"variant", variant},
                {"rows_timed", s.rows},
                {"seconds", t},
                {"inverse_seconds", t_inverse},
                {"per_row_seconds", per_row},
                {"layer_seconds", layer_seconds},
                {"extrapolated", s.rows != s.out},
                {"gflops_achieved", r.flops / t / 1e9},
                {"factor_gflops_achieved", r.factor_flops / t / 1e9},
                {"flops", r.flops},
                {"kkt_residual", r.kkt_residual},
                {"refinement_steps", r.refinement_steps},
                {"fp64_fallback_rows", r.fp64_fallback_rows},
                {"damping_relative", r.damping / h.diagonal().to(at::kDouble).mean().item<double>()},
                {"chunks", r.chunks},
                {"rows_via_inverse", r.rows_via_inverse},
                {"rows_via_kept", r.rows_via_kept}};
      note(e.dump());
      results.push_back(e);
    }
  }
  return results;
}

// The exact and the iterative solver side by side as n grows, in GEMM-equivalents: a layer's reconstruction time
// over the time of one dense fp32 product [rows, n] x [n, n] measured here in the same run, at 50% unstructured and
// 2:4 with SparseGPT's masks and updated weights (the iterative solver's warm start) on LLM-like Hessians. Wide
// layers are timed on a subset of rows and extrapolated: the layer-wide part (H's Cholesky and inverse for the exact
// solver, H's Cholesky for the iterative one, timed alone) once, the rest in proportion to the rows, against the
// product's time scaled the same way.
// OPTIMA_BENCH_DEVICE (cpu or cuda) picks the device; OPTIMA_BENCH_QUICK=1 times the two OPT-125M shapes on a few
// rows only (scripts/gpu_check.sh --cpu-only).
// SparseGPT's mask and updated weights for w at 50% unstructured, or 2:4 (nm), from H: the masks and start points
// the solvers are timed on.
optima::Selection sparsegpt_selection(const at::Tensor& w, const at::Tensor& h, bool nm) {
  const optima::SparsityPattern target =
      nm ? optima::SparsityPattern::n_m(2, 4) : optima::SparsityPattern::unstructured(0.5);
  optima::LayerStats stats;
  stats.hessian = h;
  return optima::make_selector("sparsegpt")->select(w, stats, target);
}

// A layer's exact-solve time from `te` seconds on `timed` of its `rows` rows: the layer-wide H⁻¹ once, the rest per
// row.
double exact_layer_seconds(const RowSolveResult& x, double te, int64_t rows, int64_t timed) {
  if (timed == rows) return te;
  return x.inverse_seconds + std::max(0.0, te - x.inverse_seconds) * static_cast<double>(rows) / timed;
}

// "paths": the exact and the iterative solver side by side on synthetic LLM-like Hessians as n grows, both run as
// optima prune runs them by default (fp32 work refined against fp64 residuals), with the choice --qp-solver auto
// makes.
json solver_paths() {
  const char* device_env = std::getenv("OPTIMA_BENCH_DEVICE");
  const at::Device device(device_env ? device_env : "cpu");
  const bool quick = std::getenv("OPTIMA_BENCH_QUICK") != nullptr;
  // Waits for the device, so that the time measured is the work's.
  const auto done = [](const at::Tensor& t) { (void)t.sum().item<double>(); };
  struct PathShape {
    const char* layer;
    int64_t n, full_rows, iterative_rows, exact_rows;  // exact_rows 0: not timed (the prediction stands in)
  };
  const std::vector<PathShape> shapes = {
      {"OPT-125M self_attn (768x768)", 768, 768, 768, 768},
      {"OPT-125M fc2 (768x3072)", 3072, 768, 768, 96},
      {"LLaMA-7B q_proj (4096x4096)", 4096, 4096, 256, 16},
      {"LLaMA-7B down_proj (4096x11008)", 11008, 4096, 128, 2},
      {"LLaMA-3-8B down_proj (4096x14336)", 14336, 4096, 64, 0},
  };
  json out = json::array();
  for (size_t i = 0; i < (quick ? 2 : shapes.size()); ++i) {
    PathShape s = shapes[i];
    if (quick) {
      s.iterative_rows = std::min<int64_t>(s.iterative_rows, 128);
      s.exact_rows = std::min<int64_t>(s.exact_rows, 16);
    }
    const at::Tensor h = llm_like_hessian(s.n, 2 * s.n, at::kFloat).to(device);
    const int64_t rows = s.iterative_rows;
    const at::Tensor a = at::randn({rows, s.n}).to(device);
    const at::Tensor b = at::randn({s.n, s.n}).to(device);
    const double t_gemm = best_seconds([&] { done(at::matmul(a, b)); }, 2);
    const double t_gemm_layer = t_gemm * static_cast<double>(s.full_rows) / static_cast<double>(rows);
    at::Tensor hd = h.to(at::kDouble);
    const double t_layer_wide = best_seconds([&] { done(at::cholesky_inverse(at::linalg_cholesky(hd))); }, 1);
    // The iterative solver's own layer-wide work is H's Cholesky (its preconditioner's setup, also layer-wide, is
    // left in the per-row part: the extrapolation errs on the slow side).
    const double t_cholesky = best_seconds([&] { done(at::linalg_cholesky(hd)); }, 1);
    const at::Tensor w = (at::randn({rows, s.n}) * 0.02).to(device);
    for (const bool nm : {false, true}) {
      const optima::Selection sel = sparsegpt_selection(w, h, nm);
      const at::Tensor full_mask =
          nm ? two_four_mask(at::randn({s.full_rows, s.n})) : at::rand({s.full_rows, s.n}) < 0.5;
      const optima::SolverCostPrediction predicted = optima::predict_solver_cost(full_mask);
      json e = {{"layer", s.layer},
                {"device", device.str()},
                {"gemm_fp32_gflops", 2.0 * static_cast<double>(rows) * s.n * s.n / t_gemm / 1e9},
                {"n", s.n},
                {"rows", s.full_rows},
                {"pattern", nm ? "2:4" : "unstructured50"},
                {"gemm_seconds_full_layer", t_gemm_layer},
                {"layer_wide_cholesky_inverse_seconds", t_layer_wide},
                {"auto_picks", predicted.choice == optima::RowSolverKind::kExact ? "exact" : "iterative"},
                {"predicted_exact_units", predicted.exact_units},
                {"predicted_iterative_units", predicted.iterative_units}};
      // Both solvers as optima prune runs them by default (fp32 work refined against fp64 residuals, as in "real").
      optima::RowSolveOptions options;
      options.precision = optima::SolvePrecision::kFloat32Refined;
      RowSolveResult r;
      const double t = seconds_of([&] {
        r = optima::solve_rows_iterative(w, sel.pruned, h, sel.weight, optima::kDefaultQpTolerance,
                                         optima::kDefaultQpMaxIterations, options);
        done(r.weight);
      });
      // H's factor and the masked Cholesky's order probe are paid once a layer; the rest scales with the rows.
      const double fixed = t_cholesky + r.order_probe_seconds;
      const double layer = rows == s.full_rows ? t : fixed + std::max(0.0, t - fixed) * s.full_rows / rows;
      e["iterative"] = {{"rows_timed", rows},
                        {"converged", r.converged},
                        {"flops", r.flops},
                        {"fp64_fallback_rows", r.fp64_fallback_rows},
                        // Load-independent: the solver's flops over one product's, for the rows timed.
                        {"product_flop_equivalents", r.flops / (2.0 * static_cast<double>(rows) * s.n * s.n)},
                        {"seconds", t},
                        {"layer_seconds", layer},
                        {"gemm_equivalents", layer / t_gemm_layer},
                        {"iterations", r.iterations},
                        {"outer_rounds", r.refinement_steps},
                        {"pruned_space_rounds", r.pruned_space_rounds},
                        {"kkt_residual", r.kkt_residual},
                        {"kkt_residual_undamped", r.kkt_residual_undamped},
                        {"damping", r.damping},
                        {"fp64_predicted", r.fp64_predicted},
                        {"condition_estimate", r.condition_estimate},
                        {"input_order", r.input_order},
                        {"order_probe_seconds", r.order_probe_seconds},
                        {"extrapolated", rows != s.full_rows}};
      if (s.exact_rows > 0) {
        const at::Tensor we = w.narrow(0, 0, s.exact_rows), pe = sel.pruned.narrow(0, 0, s.exact_rows);
        RowSolveResult x;
        const double te = seconds_of([&] {
          x = optima::solve_rows_exact(we, pe, h, options);
          done(x.weight);
        });
        const double exact_layer = exact_layer_seconds(x, te, s.full_rows, s.exact_rows);
        e["exact"] = {{"rows_timed", s.exact_rows},
                      {"seconds", te},
                      {"layer_seconds", exact_layer},
                      {"gemm_equivalents", exact_layer / t_gemm_layer},
                      {"kkt_residual", x.kkt_residual},
                      {"kkt_residual_undamped", x.kkt_residual_undamped},
                      {"fp64_predicted", x.fp64_predicted},
                      {"fp64_fallback_rows", x.fp64_fallback_rows},
                      {"flops", x.flops},
                      {"product_flop_equivalents", x.flops / (2.0 * static_cast<double>(s.exact_rows) * s.n * s.n)},
                      {"extrapolated", s.exact_rows != s.full_rows}};
      }
      note("paths: " + e.dump());
      out.push_back(e);
    }
  }
  return out;
}

// "real": the solvers on the Hessians of real activations, saved by `optima prune --save-hessians` (scripts/
// bench_solver --real makes them: opt-small and a random OPT-125M-shaped model on C4-style text, stories260k on
// TinyStories), with the model's own weights and SparseGPT's masks and updated weights (the start point the prune
// gives the iterative solver). Each layer: the exact solver, the iterative one by default and in the pruned-space
// formulation in fp32 (refined) and fp64, in GEMM-equivalents measured in the same run, with iterations and KKT
// residuals, and the choice --qp-solver auto makes. OPTIMA_BENCH_LAYER=TEXT times the layers whose name has TEXT;
// OPTIMA_BENCH_PATTERN=unstructured50|2:4 one pattern; OPTIMA_BENCH_VARIANTS=a,b only the solvers named (iterative,
// iterative_low_rank_fp64, iterative_pruned_space, iterative_pruned_space_fp64, auto, exact, exact_damped).
// Arguments: groups of three, HESSIAN_DIR MODEL_DIR BLOCK; the exact solver is timed on at most `exact_rows` rows of a
// wide layer and extrapolated.
// Whether `name` passes the comma-separated filter in environment variable `variable` (unset: everything does).
bool wanted(const char* variable, const std::string& name) {
  const char* filter = std::getenv(variable);
  if (filter == nullptr) return true;
  std::stringstream list(filter);
  for (std::string item; std::getline(list, item, ',');)
    if (item == name) return true;
  return false;
}

// OPTIMA_BENCH_TOL=X: the solvers' KKT tolerance (--qp-tol), kDefaultQpTolerance when unset.
double bench_tolerance() {
  const char* text = std::getenv("OPTIMA_BENCH_TOL");
  return text != nullptr ? std::strtod(text, nullptr) : optima::kDefaultQpTolerance;
}

// OPTIMA_BENCH_REPEAT=N: each solve of "real" runs N times (default 1) and the fastest counts, as the product it is
// divided by is the fastest of several: on this shared machine one fc2 solve moved 5.3-5.9 s between runs. The
// record keeps every run's seconds.
int bench_repeats() {
  const char* text = std::getenv("OPTIMA_BENCH_REPEAT");
  if (text == nullptr) return 1;
  char* end = nullptr;
  const long repeats = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || repeats < 1 || repeats > 1000)
    throw std::runtime_error(fmt::format("OPTIMA_BENCH_REPEAT must be a whole number in [1, 1000], found '{}'", text));
  return static_cast<int>(repeats);
}

// The fastest of `repeats` runs of `solve` (its result and seconds), and every run's seconds.
struct TimedSolve {
  RowSolveResult result;
  double seconds = 0;
  std::vector<double> each;
};
TimedSolve fastest_solve(int repeats, const std::function<RowSolveResult()>& solve) {
  TimedSolve best;
  best.seconds = std::numeric_limits<double>::infinity();
  for (int i = 0; i < repeats; ++i) {
    RowSolveResult r;
    const double t = seconds_of([&] { r = solve(); });
    best.each.push_back(t);
    if (t < best.seconds) {
      best.seconds = t;
      best.result = std::move(r);
    }
  }
  return best;
}

json solver_real(const std::vector<std::string>& args) {
  const auto done = [](const at::Tensor& t) { (void)t.sum().item<double>(); };
  // Hessian site -> the layers that read it, by the suffix of their weight's name (OPT and LLaMA names).
  const std::vector<std::pair<std::string, std::vector<std::string>>> sites = {
      {"attn_in", {"self_attn.q_proj.weight"}},
      {"attn_out", {"self_attn.out_proj.weight", "self_attn.o_proj.weight"}},
      {"mlp_in", {"fc1.weight", "mlp.gate_proj.weight"}},
      {"mlp_hidden", {"fc2.weight", "mlp.down_proj.weight"}}};
  const int64_t exact_rows_wide = 96;
  const double tolerance = bench_tolerance();
  const int repeats = bench_repeats();
  json out = json::array();
  for (size_t g = 0; g + 2 < args.size(); g += 3) {
    const std::string& hessian_dir = args[g];
    const std::string& model_dir = args[g + 1];
    const std::string& block = args[g + 2];
    const optima::Checkpoint model = optima::Checkpoint::open(model_dir);
    const std::string file = fmt::format("{}/hessians-block-{:04d}.safetensors", hessian_dir, std::stoi(block));
    const std::shared_ptr<optima::SafetensorsFile> hessians = optima::SafetensorsFile::open(file);
    for (const auto& [site, suffixes] : sites) {
      const optima::TensorInfo* info = nullptr;
      for (const optima::TensorInfo& t : hessians->tensors())
        if (t.name.size() > site.size() && t.name.compare(t.name.size() - site.size(), site.size(), site) == 0)
          info = &t;
      if (info == nullptr) continue;
      const std::string prefix = info->name.substr(0, info->name.size() - site.size());
      const optima::CheckpointTensor* weight_info = nullptr;
      for (const std::string& suffix : suffixes)
        if (!weight_info) weight_info = model.find(prefix + suffix);
      if (weight_info == nullptr) continue;
      const char* only_layer = std::getenv("OPTIMA_BENCH_LAYER");
      if (only_layer && weight_info->name.find(only_layer) == std::string::npos) continue;
      const at::Tensor h =
          optima::tensor_from_bytes(*info, hessians->data(*info), hessians->mapping()).to(at::kFloat).clone();
      // OPTIMA_BENCH_ROWS=N: the first N rows only (layers too wide to time whole here, such as LLaMA-7B's); the
      // product the GEMM-equivalents divide by has as many rows, so they stand for the whole layer's but for its
      // row-independent setup (preconditioner, H⁻¹), which they overstate.
      const char* row_limit = std::getenv("OPTIMA_BENCH_ROWS");
      at::Tensor w = model.load(weight_info->name).to(at::kFloat);
      const int64_t full_rows = w.size(0);
      if (row_limit != nullptr) w = w.narrow(0, 0, std::min<int64_t>(full_rows, std::atoll(row_limit))).contiguous();
      const int64_t rows = w.size(0), n = w.size(1);
      const at::Tensor a = at::randn({rows, n}), b = at::randn({n, n});
      // The product the GEMM-equivalents divide by: the fastest of those timed before the layer and after each of
      // its solves. On this shared machine one product's time moved 0.08-0.15 s from one measurement to the next
      // (fc2, 768 x 3072); the fastest errs on the strict side.
      double t_gemm = best_seconds([&] { done(at::matmul(a, b)); }, 3);
      const auto time_gemm_again = [&] { t_gemm = std::min(t_gemm, best_seconds([&] { done(at::matmul(a, b)); }, 1)); };
      for (const bool nm : {false, true}) {
        if (!wanted("OPTIMA_BENCH_PATTERN", nm ? "2:4" : "unstructured50")) continue;
        const optima::Selection sel = sparsegpt_selection(w, h, nm);
        const optima::SolverCostPrediction predicted = optima::predict_solver_cost(sel.pruned);
        json e = {{"model", model_dir},
                  {"layer", weight_info->name},
                  {"shape", {full_rows, n}},
                  {"rows_solved", rows},
                  {"pattern", nm ? "2:4" : "unstructured50"},
                  {"auto_picks", predicted.choice == optima::RowSolverKind::kExact ? "exact" : "iterative"},
                  {"predicted_exact_units", predicted.exact_units},
                  {"predicted_iterative_units", predicted.iterative_units}};
        const auto record = [&](const TimedSolve& solve, double layer_seconds, int64_t timed) {
          time_gemm_again();
          const RowSolveResult& r = solve.result;
          return json{{"rows_timed", timed},
                      {"seconds", solve.seconds},
                      {"seconds_each_run", solve.each},
                      {"layer_seconds", layer_seconds},
                      {"iterations", r.iterations},
                      {"outer_rounds", r.refinement_steps},
                      {"converged", r.converged},
                      {"kkt_residual", r.kkt_residual},
                      {"kkt_residual_undamped", r.kkt_residual_undamped},
                      {"damping_relative", r.mean_diag > 0 ? r.damping / r.mean_diag : 0.0},
                      {"condition_estimate", r.condition_estimate},
                      {"fp64_predicted", r.fp64_predicted},
                      {"fp64_fallback_rows", r.fp64_fallback_rows},
                      {"row_iterations", r.work.row_iterations},
                      {"cg_seconds", r.work.cg_seconds},
                      {"operator_seconds", r.work.operator_seconds},
                      {"replacement_seconds", r.work.replacement_seconds},
                      {"replaced_rows", r.work.replaced_rows},
                      {"input_order", r.input_order},
                      {"order_probe_seconds", r.order_probe_seconds},
                      {"extrapolated", timed != rows}};
        };
        struct Variant {
          const char* name;
          optima::IterativePreconditioner kind;
          optima::SolvePrecision precision;
        };
        // The default (kAuto: in fp32 the masked Cholesky on layers of 2048 inputs or more, the kept-space low rank on
        // narrower ones; in fp64 the pruned space where H is ill-conditioned), the
        // masked Cholesky in both precisions, the pruned space in both precisions, and the kept-space low rank in fp64
        // (what an fp64 round would run without the pruned space).
        const std::vector<Variant> variants = {
            {"iterative", optima::IterativePreconditioner::kAuto, optima::SolvePrecision::kFloat32Refined},
            {"iterative_masked_cholesky", optima::IterativePreconditioner::kMaskedCholesky,
             optima::SolvePrecision::kFloat32Refined},
            {"iterative_masked_cholesky_fp64", optima::IterativePreconditioner::kMaskedCholesky,
             optima::SolvePrecision::kFloat64},
            {"iterative_low_rank_fp64", optima::IterativePreconditioner::kLowRank, optima::SolvePrecision::kFloat64},
            {"iterative_pruned_space", optima::IterativePreconditioner::kPrunedSpace,
             optima::SolvePrecision::kFloat32Refined},
            {"iterative_pruned_space_fp64", optima::IterativePreconditioner::kPrunedSpace,
             optima::SolvePrecision::kFloat64}};
        for (const Variant& v : variants) {
          if (!wanted("OPTIMA_BENCH_VARIANTS", v.name)) continue;
          optima::RowSolveOptions options;
          options.undamped_tolerance = tolerance;
          options.precision = v.precision;
          options.preconditioner = v.kind;
          const TimedSolve solve = fastest_solve(repeats, [&] {
            RowSolveResult r = optima::solve_rows_iterative(w, sel.pruned, h, sel.weight, tolerance,
                                                            optima::kDefaultQpMaxIterations, options);
            done(r.weight);
            return r;
          });
          e[v.name] = record(solve, solve.seconds, rows);
        }
        if (wanted("OPTIMA_BENCH_VARIANTS", "auto")) {
          // --qp-solver auto as the prune runs it: the predicted solver, a CG given up past its break-even.
          optima::RowSolveOptions options;
          options.undamped_tolerance = tolerance;
          options.precision = optima::SolvePrecision::kFloat32Refined;
          const TimedSolve solve = fastest_solve(repeats, [&] {
            RowSolveResult r = optima::solve_rows_auto(w, sel.pruned, h, sel.weight, tolerance,
                                                       optima::kDefaultQpMaxIterations, options, predicted);
            done(r.weight);
            return r;
          });
          e["auto"] = record(solve, solve.seconds, rows);
          e["auto"]["abandoned_iterations"] = solve.result.abandoned_iterations;
          e["auto"]["break_even_iterations"] = predicted.break_even_iterations;
        }
        // The exact solver as it runs (polished to the undamped optimum where H is definite), and "exact_damped":
        // the damped optimum alone, which shows what polishing costs.
        for (const char* name : {"exact", "exact_damped"}) {
          if (!wanted("OPTIMA_BENCH_VARIANTS", name)) continue;
          const int64_t timed = n >= 2048 ? std::min(rows, exact_rows_wide) : rows;
          optima::RowSolveOptions options;
          options.precision = optima::SolvePrecision::kFloat32Refined;
          options.undamped_tolerance = std::string(name) == "exact_damped" ? 0 : tolerance;
          const TimedSolve solve = fastest_solve(repeats, [&] {
            RowSolveResult x =
                optima::solve_rows_exact(w.narrow(0, 0, timed), sel.pruned.narrow(0, 0, timed), h, options);
            done(x.weight);
            return x;
          });
          e[name] = record(solve, exact_layer_seconds(solve.result, solve.seconds, rows, timed), timed);
          e[name]["damped_rows"] = solve.result.damped_rows;
        }
        // Each solve in GEMM-equivalents of the fastest product timed for this layer.
        for (auto& item : e.items())
          if (item.value().is_object() && item.value().contains("layer_seconds"))
            item.value()["gemm_equivalents"] = item.value()["layer_seconds"].get<double>() / t_gemm;
        e["gemm_fp32_gflops"] = 2.0 * static_cast<double>(rows) * n * n / t_gemm / 1e9;
        e["gemm_seconds"] = t_gemm;
        note("real: " + e.dump());
        out.push_back(e);
      }
    }
  }
  return out;
}

// LLaMA-3-8B at 50% on one H100, projected from flop counts and rates (no H100 here): the factorization flops of
// every layer (each row factors a system of about in/2 unknowns, in³/24 flop) at the solver's effective per-row
// rate, that is the rows' factorization flops over the rows' solve time (gathers, products and refinement included;
// the layer-wide H⁻¹ left out, as it is a small part of a whole layer) measured above on the 4096-wide LLaMA-7B
// shapes, taken as the same fraction of the H100's fp32 peak as it was here of this machine's fp32 product rate.
json llama3_8b_h100_projection(const json& rates, const json& layers) {
  struct Layer {
    const char* name;
    int64_t rows, in, count;
  };
  const std::vector<Layer> shapes = {{"q_proj, o_proj", 4096, 4096, 2},
                                     {"k_proj, v_proj", 1024, 4096, 2},
                                     {"gate_proj, up_proj", 14336, 4096, 2},
                                     {"down_proj", 4096, 14336, 1}};
  double factor_flops = 0;
  for (const Layer& l : shapes) {
    const double m = static_cast<double>(l.in) / 2;
    factor_flops += 32.0 * static_cast<double>(l.count) * static_cast<double>(l.rows) * m * m * m / 3;
  }
  double fraction = 0;
  int64_t used = 0;
  for (const json& e : layers)
    if (e["model"] == "LLaMA-7B" && e["variant"] == "unstructured50/fp32_refined" && !e.contains("timing_from")) {
      const double n = e["shape"][1].get<double>();
      const double row_flops = e["factor_gflops_achieved"].get<double>() * 1e9 * e["seconds"].get<double>() -
                               n * n * n / 3;  // the solver counts H's Cholesky among the factorizations
      const double row_seconds = e["seconds"].get<double>() - e["inverse_seconds"].get<double>();
      fraction += row_flops / row_seconds / 1e9 / rates["matmul_fp32_gflops"].get<double>();
      ++used;
    }
  if (used == 0) return json();
  fraction /= static_cast<double>(used);
  const double h100_fp32_peak = 67e12;  // H100 SXM, fp32 (non-tensor); its fp64 tensor-core peak is the same
  const double seconds = factor_flops / (fraction * h100_fp32_peak);
  return {{"model", "LLaMA-3-8B (32 layers: q/o 4096x4096, k/v 1024x4096, gate/up 14336x4096, down 4096x14336)"},
          {"sparsity", 0.5},
          {"factorization_flops", factor_flops},
          {"effective_factorization_rate_as_fraction_of_fp32_matmul_rate_here", fraction},
          {"h100_fp32_peak_flops", h100_fp32_peak},
          {"projected_seconds", seconds},
          {"reference_solver_seconds", 40 * 3600},
          {"note", "assumes the H100 reaches the same fraction of its fp32 peak as this CPU did of its matmul rate"}};
}

// "passes": the masked-Cholesky preconditioner's two triangular passes (one CG iteration of the split form, one
// product's flops) against one product [rows, n] x [n, n] in the same precision, on a random factor and a 50% mask.
json pass_rates() {
  json out = json::array();
  for (const auto& [rows, n] : std::vector<std::pair<int64_t, int64_t>>{{768, 768}, {768, 3072}, {1024, 4096}}) {
    for (const at::ScalarType dtype : {at::kFloat, at::kDouble}) {
      const auto opts = at::TensorOptions().dtype(dtype);
      const at::Tensor a = at::randn({n, n}, opts) / std::sqrt(static_cast<double>(n));
      const at::Tensor l = at::linalg_cholesky(at::matmul(a, a.t()) + at::eye(n, opts)).contiguous();
      const at::Tensor kept = (at::rand({rows, n}, opts) < 0.5).to(dtype);
      const at::Tensor p = at::randn({rows, n}, opts) * kept;
      const at::Tensor full = at::randn({n, n}, opts);
      const double t_gemm = best_seconds([&] { (void)at::matmul(p, full).sum().item<double>(); }, 5);
      const double t_passes = best_seconds(
          [&] {
            at::Tensor sums;
            (void)optima::solve_detail::masked_backward(l, p, kept, &sums);
            (void)optima::solve_detail::masked_forward(l, at::Tensor(), sums, kept).sum().item<double>();
          },
          5);
      out.push_back({{"rows", rows},
                     {"n", n},
                     {"dtype", dtype == at::kFloat ? "fp32" : "fp64"},
                     {"gemm_seconds", t_gemm},
                     {"passes_seconds", t_passes},
                     {"passes_in_products", t_passes / t_gemm}});
      note(fmt::format("passes {}x{} {}: {:.4f} s, product {:.4f} s: {:.2f} products", rows, n,
                       dtype == at::kFloat ? "fp32" : "fp64", t_passes, t_gemm, t_passes / t_gemm));
    }
  }
  return out;
}

// The benchmark; main reports what it throws.
int run(int argc, char** argv) {
  const char* threads = std::getenv("OPTIMA_BENCH_THREADS");
  if (threads) at::set_num_threads(std::atoi(threads));
  at::manual_seed(0);
  json doc;
  doc["what"] = "optima exact row solver (solve_rows_exact) on CPU; see scripts/bench_solver";
  doc["threads"] = at::get_num_threads();
  {
    // Other work on the machine slows every number here: record the load the run started under.
    std::ifstream load("/proc/loadavg");
    std::string line;
    if (std::getline(load, line)) doc["loadavg_at_start"] = line;
  }
  const std::string config = at::show_config();
  const size_t blas = config.find("BLAS_INFO=");
  doc["blas"] = blas == std::string::npos ? "unknown" : config.substr(blas, config.find(',', blas) - blas);
  const auto start = std::chrono::steady_clock::now();
  // A second argument (a model name) times that model's layer shapes alone, for quick comparisons.
  const std::string only_model = argc > 2 ? argv[2] : "";
  if (only_model == "real") {
    // The real-Hessian section alone (scripts/bench_solver --real merges it into the existing document).
    doc["real"] = solver_real(std::vector<std::string>(argv + 3, argv + argc));
    doc["total_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::ofstream(argv[1]) << doc.dump(2) << "\n";
    return 0;
  }
  if (only_model == "passes") {
    doc["passes"] = pass_rates();
    std::ofstream(argv[1]) << doc.dump(2) << "\n";
    return 0;
  }
  if (only_model == "paths") {
    // The solver-paths section alone (scripts/bench_solver --paths merges it into the existing document).
    doc["paths"] = solver_paths();
    doc["total_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::ofstream(argc > 1 ? argv[1] : "/dev/stdout") << doc.dump(2) << "\n";
    return 0;
  }
  if (only_model.empty()) {
    doc["rates"] = machine_rates();
    doc["damping"] = damping_study();
  }
  doc["layers"] = layer_benchmarks(only_model);
  if (only_model.empty()) doc["paths"] = solver_paths();
  if (only_model.empty()) doc["projection_llama3_8b_h100"] = llama3_8b_h100_projection(doc["rates"], doc["layers"]);
  doc["total_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string text = doc.dump(2) + "\n";
  if (argc > 1) {
    std::ofstream(argv[1]) << text;
  } else {
    std::cout << text;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    note(std::string("error: ") + e.what());
    return 1;
  }
}
