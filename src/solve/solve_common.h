// Pieces shared by the exact and the iterative row solvers: input checks, Hessian preparation, batched
// Cholesky factors and the KKT residual.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace optima::solve_detail {

// "[a, b]" and "Float", for error messages.
std::string shape_of(const at::Tensor& t);
std::string dtype_of(const at::Tensor& t);

// Throws kInput, naming `where` and expected vs found, unless the shapes, dtypes and devices fit together.
// `start` may be undefined.
void validate_inputs(std::string_view where, const at::Tensor& dense_weight, const at::Tensor& pruned,
                     const at::Tensor& hessian, const at::Tensor& start);

// Throws kUsage, naming `where`, unless the damping is >= 0 and the memory budget positive (options of either solver).
void validate_options(std::string_view where, double damp, int64_t memory_budget_bytes);

// Throws kNumeric naming `what` when `t` holds a NaN or an infinity.
void require_finite(std::string_view where, std::string_view what, const at::Tensor& t);

// The Hessian in fp64, symmetrised (symmetrize.h), with dead inputs fixed (H_jj == 0: row and column zeroed,
// H_jj = 1), before damping, with its inputs in `order` where that is given. The weight needs no change for a dead
// input: its column has no effect on the objective.
struct PreparedHessian {
  at::Tensor h;          // [n, n] fp64
  double mean_diag = 0;  // mean of diag H after the dead inputs were fixed: the damping's unit
  int64_t dead_inputs = 0;
};
PreparedHessian prepare_hessian(std::string_view where, const at::Tensor& hessian,
                                const at::Tensor& order = at::Tensor());

// The damping to retry with after a factorization failed at `damping` on try `attempt` (0 first): ten times more,
// from 1e-10 · mean_diag when it was zero. Past `max_retries` tries, or past SparseGPT's 1e-2 · mean_diag (beyond it
// the answer is no longer the one asked for), a kNumeric error naming `where`.
double next_retry_damping(std::string_view where, double damping, int attempt, int max_retries, double mean_diag);

// Per-row relative KKT residual ||rho_T|| / ||(H w)_T|| from rho = (H δ) already masked to T and the row norms
// ||(H w)_T||; rows whose denominator is 0 report ||rho_T|| itself.
at::Tensor relative_residual(const at::Tensor& rho_t, const at::Tensor& hw_t_norm);

// H⁻¹ of an SPD matrix from its Cholesky factor, with single-threaded LAPACK on CPU; undefined when the
// factorization fails. `condition_estimate`, when given, receives cholesky_condition_estimate of that factor
// (infinite when it failed).
at::Tensor spd_inverse(const at::Tensor& h, double* condition_estimate = nullptr);

// The lower Cholesky factor of the symmetric h [n, n] and whether h is positive definite to working precision (where
// it is not, the factor is not usable). On CPU in fp64, LAPACK's potrf in place on one copy, with ATen's threads:
// ATen's linalg_cholesky_ex copies into column-major order and zeroes the other triangle afterwards, 0.05 s of 0.19 s
// at n = 3072. Elsewhere, that path.
std::pair<at::Tensor, bool> cholesky_factor(const at::Tensor& h);

// cholesky_condition_estimate of h's Cholesky factor (single-threaded LAPACK on CPU), infinite when it fails.
double spd_condition_estimate(const at::Tensor& h);

// Cholesky factors of a batch of SPD matrices [b, m, m]. On CPU the batch is split into one slice per ATen thread,
// each factored on its own OS thread with single-threaded LAPACK: MKL's multi-threaded potrf on a few hundred
// columns runs at a fraction of one core's speed (bench/solver_cpu.json, "rates"). There, a contiguous fp32/fp64
// batch is factored in place by LAPACK's potrf (which LibTorch's CPU library exports), reading the lower triangle
// only: ATen's linalg_cholesky_ex first copies every matrix into column-major order and zeroes the other triangle
// afterwards, memory traffic that cost more than the factorization itself on these machines. Where LibTorch exports
// no LAPACK, and on CUDA (one cuSOLVER batched call), ATen's path is used.
class BatchedCholesky {
 public:
  // Factors `a` (reading its lower triangle); returns false when any matrix is not positive definite to working
  // precision. `a` may be overwritten by its factor: pass a tensor the caller no longer needs.
  bool factor(at::Tensor a);
  // Solves A x = rhs for rhs [b, m] (cast to the factors' dtype); returns x [b, m] in the factors' dtype.
  at::Tensor solve(const at::Tensor& rhs) const;
  // True when factor() factors CPU batches in place through LAPACK (for benchmarks and their reports).
  static bool uses_lapack_in_place();

 private:
  std::vector<std::pair<int64_t, int64_t>> ranges_;
  std::vector<at::Tensor> factors_;  // ATen path: lower factors per slice; LAPACK path: the batch, factored in place
  bool in_place_ = false;
};

// Runs fn(i) for i in [0, count): on CPU on `count` OS threads with ATen and LAPACK single-threaded meanwhile
// (exceptions are rethrown here), in order on other devices.
void for_each_slice(bool cpu, int64_t count, const std::function<void(int64_t)>& fn);

}  // namespace optima::solve_detail
