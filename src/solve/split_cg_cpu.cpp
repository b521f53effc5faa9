// The element-wise part of a split-CG iteration (see split_cg.h): the CPU kernel, one sweep per row, and the ATen
// composition that other devices run and the tests compare with.
#include "split_cg.h"

#include <ATen/ATen.h>

#include <cstdint>

#include "optima/core/parallel.h"

namespace optima::solve_detail {

namespace {

// Rows per piece handed to a thread: a row is a few dozen microseconds of work at n = 3072.
constexpr int64_t kRowsPerPiece = 8;
// Independent partial sums per dot product, so that the compiler can keep them in vector lanes (a single chain
// would neither vectorize nor pipeline).
constexpr int kChains = 8;

// The three sweeps of one row, in cache after the first: p · q; then x, r and r · r; then p. Dot products accumulate
// in double whatever T is, in kChains partial sums (the last n mod kChains entries in the first).
template <typename T>
void step_row(int64_t n, T* p, T* r, T* x, T& rz, const T* f, const T* y, const T* kept, bool active) {
  const auto sweep = [n](const auto& term) {
    double chains[kChains] = {};
    int64_t j = 0;
    for (; j + kChains <= n; j += kChains)
      for (int k = 0; k < kChains; ++k) chains[k] += term(j + k);
    for (; j < n; ++j) chains[0] += term(j);
    double sum = 0;
    for (const double c : chains) sum += c;
    return sum;
  };
  const auto q = [&](int64_t j) { return p[j] - kept[j] * f[j]; };
  const double pq = sweep([&](int64_t j) { return static_cast<double>(p[j]) * static_cast<double>(q(j)); });
  const T alpha = active && pq > 0 ? static_cast<T>(static_cast<double>(rz) / pq) : T(0);
  const double rr = sweep([&](int64_t j) {
    x[j] += alpha * y[j];
    r[j] -= alpha * q(j);
    return static_cast<double>(r[j]) * static_cast<double>(r[j]);
  });
  const T beta = active && rz > 0 ? static_cast<T>(rr / static_cast<double>(rz)) : T(0);
  for (int64_t j = 0; j < n; ++j) p[j] = r[j] + beta * p[j];
  rz = static_cast<T>(rr);
}

template <typename T>
void step_cpu(SplitCgState& state, const at::Tensor& f, const at::Tensor& y, const at::Tensor& kept,
              const at::Tensor& active) {
  const int64_t n = state.p.size(1);
  T* const p = state.p.data_ptr<T>();
  T* const r = state.r.data_ptr<T>();
  T* const x = state.x.data_ptr<T>();
  T* const rz = state.rz.data_ptr<T>();
  const T* const fp = f.data_ptr<T>();
  const T* const yp = y.data_ptr<T>();
  const T* const kp = kept.data_ptr<T>();
  const bool* const ap = active.data_ptr<bool>();
  parallel_ranges(state.p.size(0), kRowsPerPiece, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t o = i * n;
      step_row<T>(n, p + o, r + o, x + o, rz[i], fp + o, yp + o, kp + o, ap[i]);
    }
  });
}

bool kernel_applies(const SplitCgState& state, const at::Tensor& f, const at::Tensor& y, const at::Tensor& kept,
                    const at::Tensor& active) {
  const at::ScalarType dtype = state.p.scalar_type();
  if (!state.p.is_cpu() || (dtype != at::kFloat && dtype != at::kDouble)) return false;
  for (const at::Tensor* t : {&state.p, &state.r, &state.x, &f, &y, &kept})
    if (t->scalar_type() != dtype || !t->is_contiguous() || t->sizes() != state.p.sizes()) return false;
  return state.rz.scalar_type() == dtype && state.rz.is_contiguous() && state.rz.numel() == state.p.size(0) &&
         active.scalar_type() == at::kBool && active.is_contiguous() && active.numel() == state.p.size(0);
}

}  // namespace

void split_cg_step(SplitCgState& state, const at::Tensor& f, const at::Tensor& y, const at::Tensor& kept,
                   const at::Tensor& active) {
  if (!kernel_applies(state, f, y, kept, active)) return split_cg_step_reference(state, f, y, kept, active);
  if (state.p.scalar_type() == at::kFloat)
    step_cpu<float>(state, f, y, kept, active);
  else
    step_cpu<double>(state, f, y, kept, active);
}

void split_cg_step_reference(SplitCgState& state, const at::Tensor& f, const at::Tensor& y, const at::Tensor& kept,
                             const at::Tensor& active) {
  const at::Tensor q = state.p - kept * f;
  const at::Tensor pq = at::linalg_vecdot(state.p, q);
  const at::Tensor alpha = at::where(active & (pq > 0), state.rz / pq, at::zeros_like(pq)).unsqueeze(1);
  state.x.addcmul_(y, alpha);
  state.r.addcmul_(q, alpha, -1.0);
  const at::Tensor rr = at::linalg_vecdot(state.r, state.r);
  const at::Tensor beta = at::where(active & (state.rz > 0), rr / state.rz, at::zeros_like(rr)).unsqueeze(1);
  at::addcmul_out(state.p, state.r, state.p, beta);
  state.rz = rr;
}

}  // namespace optima::solve_detail
