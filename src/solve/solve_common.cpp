// Input checks, Hessian preparation, batched Cholesky and KKT residuals shared by the row solvers.
#include "solve_common.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <ATen/Dispatch.h>

#include <algorithm>
#include <exception>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "optima/core/error.h"
#include "optima/core/finite.h"
#include "optima/solve/row_solver.h"
#include "symmetrize.h"

// LAPACK's Cholesky factorization and solve (LP64), as LibTorch's CPU library exports them from the BLAS/LAPACK it
// bundles. Weak: a LibTorch that exports none leaves them null, and the solver uses ATen's own path instead.
extern "C" {
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info) __attribute__((weak));
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info) __attribute__((weak));
void spotrs_(const char* uplo, const int* n, const int* nrhs, const float* a, const int* lda, float* b, const int* ldb,
             int* info) __attribute__((weak));
void dpotrs_(const char* uplo, const int* n, const int* nrhs, const double* a, const int* lda, double* b,
             const int* ldb, int* info) __attribute__((weak));
}

namespace optima::solve_detail {

std::string shape_of(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

std::string dtype_of(const at::Tensor& t) {
  return std::string(c10::toString(t.scalar_type()));
}

void validate_inputs(std::string_view where, const at::Tensor& dense_weight, const at::Tensor& pruned,
                     const at::Tensor& hessian, const at::Tensor& start) {
  const std::string w(where);
  if (!dense_weight.defined() || !pruned.defined() || !hessian.defined())
    fail_input(w, "weight, mask and Hessian must all be given");
  if (dense_weight.dim() != 2) fail_input(w + ": weight", "wrong rank", "[out, in]", shape_of(dense_weight));
  if (!dense_weight.is_floating_point())
    fail_input(w + ": weight", "wrong dtype", "a floating-point type", dtype_of(dense_weight));
  const int64_t out = dense_weight.size(0), in = dense_weight.size(1);
  const std::string wshape = shape_of(dense_weight);
  if (pruned.sizes() != dense_weight.sizes())
    fail_input(w + ": mask", "shape does not match the weight", wshape, shape_of(pruned));
  if (pruned.scalar_type() != at::kBool) fail_input(w + ": mask", "wrong dtype", "Bool", dtype_of(pruned));
  if (hessian.dim() != 2 || hessian.size(0) != in || hessian.size(1) != in)
    fail_input(w + ": Hessian", "shape does not match the weight's input size", fmt::format("[{}, {}]", in, in),
               shape_of(hessian));
  if (!hessian.is_floating_point())
    fail_input(w + ": Hessian", "wrong dtype", "a floating-point type", dtype_of(hessian));
  if (pruned.device() != dense_weight.device() || hessian.device() != dense_weight.device())
    fail_input(w, "weight, mask and Hessian are on different devices", dense_weight.device().str(),
               pruned.device().str() + " (mask), " + hessian.device().str() + " (Hessian)");
  if (start.defined()) {
    if (start.sizes() != dense_weight.sizes())
      fail_input(w + ": start", "shape does not match the weight", wshape, shape_of(start));
    if (!start.is_floating_point()) fail_input(w + ": start", "wrong dtype", "a floating-point type", dtype_of(start));
    if (start.device() != dense_weight.device())
      fail_input(w + ": start", "on a different device from the weight", dense_weight.device().str(),
                 start.device().str());
  }
  (void)out;
}

void validate_options(std::string_view where, double damp, int64_t memory_budget_bytes) {
  if (!(damp >= 0)) fail_usage(fmt::format("{}: damping must be >= 0, found {}", where, damp));
  if (memory_budget_bytes <= 0)
    fail_usage(fmt::format("{}: memory budget must be positive, found {}", where, memory_budget_bytes));
}

void require_finite(std::string_view where, std::string_view what, const at::Tensor& t) {
  if (t.numel() == 0) return;
  if (!all_finite(t))
    fail(ErrorKind::kNumeric, where, std::string(what) + " holds NaN or infinite values", "finite values",
         std::to_string(at::logical_not(at::isfinite(t)).sum().item<int64_t>()) + " non-finite");
}

PreparedHessian prepare_hessian(std::string_view where, const at::Tensor& hessian, const at::Tensor& order) {
  PreparedHessian p;
  require_finite(where, "Hessian", hessian);
  at::Tensor h = symmetrized_fp64(hessian, order);
  const at::Tensor dead = h.diagonal() == 0;
  p.dead_inputs = dead.sum().item<int64_t>();
  if (p.dead_inputs > 0) {
    // An input that is always zero has H_jj = 0 and, for a Gram matrix, a zero row and column: the objective does
    // not depend on that weight. A unit diagonal keeps the systems definite and leaves the other rows' answers
    // unchanged (the dead unknown decouples, with zero right-hand side), as in SparseGPT.
    h.masked_fill_(dead.unsqueeze(0) | dead.unsqueeze(1), 0.0);
    h.diagonal().masked_fill_(dead, 1.0);
  }
  if (h.numel() > 0 && h.diagonal().min().item<double>() < 0)
    fail(ErrorKind::kNumeric, where, "the Hessian has a negative diagonal entry: it is not positive semi-definite",
         "diag(H) >= 0", fmt::format("min {:.3g}", h.diagonal().min().item<double>()));
  p.mean_diag = h.numel() ? h.diagonal().mean().item<double>() : 0.0;
  p.h = h;
  return p;
}

double next_retry_damping(std::string_view where, double damping, int attempt, int max_retries, double mean_diag) {
  constexpr double kFirstRetryDamp = 1e-10, kMaxRetryDamp = 1e-2;  // relative to mean(diag H)
  const double next = std::max(damping * 10, kFirstRetryDamp * mean_diag);
  if (attempt >= max_retries || next > kMaxRetryDamp * mean_diag * (1 + 1e-12))
    fail(ErrorKind::kNumeric, where,
         fmt::format("Cholesky factorization failed at every damping tried ({} retries, last {:.3g} = {:.3g} x "
                     "mean(diag H)); the Hessian is not positive semi-definite",
                     attempt, damping, damping / mean_diag),
         fmt::format("success at damping <= {:.3g} x mean(diag H)", kMaxRetryDamp), "failure");
  return next;
}

at::Tensor relative_residual(const at::Tensor& rho_t, const at::Tensor& hw_t_norm) {
  const at::Tensor num = at::linalg_vector_norm(rho_t, 2, {1});
  return at::where(hw_t_norm > 0, num / hw_t_norm.clamp_min(1e-300), num);
}

namespace {

// Restores ATen's (and so MKL's) thread count when it leaves scope, exceptions included.
class ThreadCountGuard {
 public:
  explicit ThreadCountGuard(int threads) : saved_(at::get_num_threads()) { at::set_num_threads(threads); }
  ~ThreadCountGuard() { at::set_num_threads(saved_); }
  ThreadCountGuard(const ThreadCountGuard&) = delete;
  ThreadCountGuard& operator=(const ThreadCountGuard&) = delete;

 private:
  int saved_;
};

}  // namespace

void for_each_slice(bool cpu, int64_t count, const std::function<void(int64_t)>& fn) {
  if (!cpu || count <= 1) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  // One OS thread per slice with LAPACK single-threaded. MKL does not drop to one thread inside ATen's own
  // parallel_for, and its multi-threaded potrf on small matrices is up to 10x slower than one thread per matrix.
  // The thread count is process-wide while this runs; the solver is the only ATen work at that point.
  ThreadCountGuard single(1);
  std::vector<std::exception_ptr> errors(count);
  std::vector<std::thread> threads;
  threads.reserve(count);
  for (int64_t i = 0; i < count; ++i) {
    threads.emplace_back([&, i] {
      try {
        fn(i);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

at::Tensor spd_inverse(const at::Tensor& h, double* condition_estimate) {
  // LAPACK's multi-threaded potrf/potri synchronise often; on a 2-core machine shared with other work they were
  // measured 10-30x slower than one thread (0.02 s becoming 2 s on 768 columns), while one thread costs at most 2x
  // when the machine is idle and the inverse is a small part of any layer whose rows need it.
  std::optional<ThreadCountGuard> single;
  if (h.is_cpu()) single.emplace(1);
  auto [l, info] = at::linalg_cholesky_ex(h);
  const bool ok = info.item<int64_t>() == 0;
  if (condition_estimate)
    *condition_estimate = ok ? cholesky_condition_estimate(l) : std::numeric_limits<double>::infinity();
  if (!ok) return at::Tensor();
  return at::cholesky_inverse(l).contiguous();  // row-major for the system gathers
}

double spd_condition_estimate(const at::Tensor& h) {
  std::optional<ThreadCountGuard> single;
  if (h.is_cpu()) single.emplace(1);
  auto [l, info] = at::linalg_cholesky_ex(h);
  return info.item<int64_t>() == 0 ? cholesky_condition_estimate(l) : std::numeric_limits<double>::infinity();
}

namespace {

// A row-major [m, m] buffer whose lower triangle holds A is, read column-major, a matrix whose upper triangle holds
// A (A is symmetric): potrf('U') leaves U with A = UᵀU there, which row-major is the lower factor L = Uᵀ.
template <typename T>
bool potrf_row_major_lower(T* a, int m) {
  const char uplo = 'U';
  int info = 0;
  if constexpr (std::is_same_v<T, float>)
    spotrf_(&uplo, &m, a, &m, &info);
  else
    dpotrf_(&uplo, &m, a, &m, &info);
  return info == 0;
}

template <typename T>
void potrs_row_major_lower(const T* a, int m, T* x) {
  const char uplo = 'U';
  const int nrhs = 1;
  int info = 0;
  if constexpr (std::is_same_v<T, float>)
    spotrs_(&uplo, &m, &nrhs, a, &m, x, &m, &info);
  else
    dpotrs_(&uplo, &m, &nrhs, a, &m, x, &m, &info);
  OPTIMA_ASSERT(info == 0);
}

}  // namespace

std::pair<at::Tensor, bool> cholesky_factor(const at::Tensor& h) {
  const bool lapack = h.is_cpu() && h.scalar_type() == at::kDouble && dpotrf_ != nullptr && h.size(0) > 0 &&
                      h.size(0) <= std::numeric_limits<int>::max();
  if (!lapack) {
    auto [l, info] = at::linalg_cholesky_ex(h);
    return {l, info.item<int64_t>() == 0};
  }
  at::Tensor l = h.contiguous().clone();
  const bool ok = potrf_row_major_lower(l.data_ptr<double>(), static_cast<int>(l.size(0)));
  return {l.tril_(), ok};
}

bool BatchedCholesky::uses_lapack_in_place() {
  return spotrf_ != nullptr && dpotrf_ != nullptr && spotrs_ != nullptr && dpotrs_ != nullptr;
}

bool BatchedCholesky::factor(at::Tensor a) {
  const int64_t b = a.size(0), m = a.size(1);
  const bool cpu = a.is_cpu();
  const int64_t slices = cpu ? std::min<int64_t>(b, std::max(1, at::get_num_threads())) : 1;
  ranges_.clear();
  for (int64_t s = 0; s < slices; ++s) ranges_.emplace_back(b * s / slices, b * (s + 1) / slices);
  in_place_ = cpu && uses_lapack_in_place() && a.is_contiguous() && m <= std::numeric_limits<int>::max() &&
              (a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble);
  if (in_place_) {
    std::vector<char> ok(static_cast<size_t>(slices), 1);
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "BatchedCholesky::factor", [&] {
      scalar_t* data = a.data_ptr<scalar_t>();
      for_each_slice(true, slices, [&](int64_t s) {
        for (int64_t k = ranges_[s].first; k < ranges_[s].second && ok[s]; ++k)
          ok[s] = potrf_row_major_lower(data + k * m * m, static_cast<int>(m));
      });
    });
    factors_.assign(1, a);
    return std::all_of(ok.begin(), ok.end(), [](char v) { return v != 0; });
  }
  factors_.assign(slices, at::Tensor());
  std::vector<at::Tensor> infos(slices);
  for_each_slice(cpu, slices, [&](int64_t s) {
    auto [l, info] = at::linalg_cholesky_ex(a.slice(0, ranges_[s].first, ranges_[s].second));
    factors_[s] = l;
    infos[s] = info;
  });
  for (const at::Tensor& info : infos)
    if (info.ne(0).any().item<bool>()) return false;
  return true;
}

at::Tensor BatchedCholesky::solve(const at::Tensor& rhs) const {
  OPTIMA_ASSERT(!factors_.empty());
  const at::Tensor r = rhs.to(factors_[0].scalar_type());
  if (in_place_) {
    const at::Tensor& a = factors_[0];
    const int64_t m = a.size(1);
    at::Tensor out = r.contiguous().clone();
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "BatchedCholesky::solve", [&] {
      const scalar_t* factor_data = a.data_ptr<scalar_t>();
      scalar_t* x = out.data_ptr<scalar_t>();
      for_each_slice(true, static_cast<int64_t>(ranges_.size()), [&](int64_t s) {
        for (int64_t k = ranges_[s].first; k < ranges_[s].second; ++k)
          potrs_row_major_lower(factor_data + k * m * m, static_cast<int>(m), x + k * m);
      });
    });
    return out;
  }
  at::Tensor out = at::empty_like(r);
  for_each_slice(r.is_cpu(), static_cast<int64_t>(ranges_.size()), [&](int64_t s) {
    const auto [begin, end] = ranges_[s];
    // Two triangular solves: cholesky_solve copies each factor into a new layout first, which took 6x longer than
    // the solves themselves on [32, 1479, 1479] fp32 factors.
    const at::Tensor& l = factors_[s];
    const at::Tensor y = at::linalg_solve_triangular(l, r.slice(0, begin, end).unsqueeze(2), /*upper=*/false);
    out.slice(0, begin, end).copy_(at::linalg_solve_triangular(l.mT(), y, /*upper=*/true).squeeze(2));
  });
  return out;
}

}  // namespace optima::solve_detail
