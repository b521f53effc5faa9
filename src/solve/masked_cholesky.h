// Triangular passes with one shared Cholesky factor L of H (H = L Lᵀ), each row restricted to its own kept set T:
// the kept-space CG's masked-Cholesky preconditioner (row_solver_iterative.cpp).
//
// Restricting L to a row's kept set gives L_TT, and H_TT = L_TT L_TTᵀ + L_TS L_TSᵀ exactly (S: the pruned set), so
// L_TT L_TTᵀ is a preconditioner whose spectrum starts at 1 and whose solves need no per-row factorization: a pass
// over the full L with the row's pruned entries held at given values. Blocked, a pass is one product with L's lower
// half at the machine's product rate ([rows, k] x [k, b] per block of b inputs) plus a per-row solve within each
// diagonal block, the only part that is not a product. The CPU kernel of that part (masked_cholesky_cpu.cpp) is the
// reference; the CUDA twin (masked_cholesky_cuda.cu) is checked against it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace optima::solve_detail {

// z [rows, n] with z_S = given_S (0 where `given` is undefined) and (L z)_T = rhs_T (0 where `rhs` is undefined).
// l [n, n] lower triangular with a positive diagonal; kept [rows, n] 0/1 in l's dtype; rhs, given [rows, n]. All on
// one device, fp32 or fp64, contiguous.
at::Tensor masked_forward(const at::Tensor& l, const at::Tensor& rhs, const at::Tensor& given, const at::Tensor& kept);

// x [rows, n] with x_S = 0 and (Lᵀ x)_T = rhs_T; when `sums` is given it receives Lᵀ x (on T that is rhs; on S it is
// L_TSᵀ x_T, which the pass computes on the way).
at::Tensor masked_backward(const at::Tensor& l, const at::Tensor& rhs, const at::Tensor& kept,
                           at::Tensor* sums = nullptr);

// One diagonal block of a pass, for every row. Row-major [rows, ·] arrays with `stride` elements between rows,
// pointing at the block's first column; `off` [rows, b] (`off_stride` elements between rows) holds the products with
// the blocks already done.
// Forward (lower, i ascending): t = off_i + Σ_{j<i} L_ij z_j; z_i = kept_i ? (rhs_i − t) / L_ii : given_i.
// Backward (Lᵀ, i descending): t = off_i + Σ_{j>i} L_ji x_j; x_i = kept_i ? (rhs_i − t) / L_ii : 0;
// sums_i = t + L_ii x_i.
template <typename T>
struct MaskedBlock {
  const T* l = nullptr;  // the block's top-left entry in L
  int64_t ld = 0;        // L's row length
  int64_t size = 0;      // b
  int64_t rows = 0;
  int64_t stride = 0;
  const T* off = nullptr;
  int64_t off_stride = 0;
  const T* rhs = nullptr;    // may be null: 0
  const T* given = nullptr;  // may be null: 0
  const T* kept = nullptr;
  T* out = nullptr;
  T* sums = nullptr;  // backward only; may be null
};

template <typename T>
void masked_block_cpu(const MaskedBlock<T>& block, bool backward);
// Which build of the CPU kernel runs: the AVX2 one where the CPU has it (the default), or the baseline x86-64 one
// every CPU runs (the tests check both against the reference).
enum class MaskedKernelBuild { kBest, kBaseline };
void set_masked_kernel_build(MaskedKernelBuild build);
template <typename T>
void masked_block_cuda(const MaskedBlock<T>& block, bool backward);

}  // namespace optima::solve_detail
