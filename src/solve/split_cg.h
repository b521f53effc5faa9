// The element-wise part of one iteration of the masked-Cholesky split CG (row_solver_iterative.cpp), every row at
// once: after the two triangular passes, everything an iteration does is a few passes over [rows, n] arrays, which
// the CPU kernel (split_cg_cpu.cpp) makes one sweep per row while the row is in cache; any other device runs the same
// arithmetic as ATen operations (split_cg_step_reference), which is also what the tests check the kernel against.
#pragma once

#include <ATen/core/Tensor.h>

namespace optima::solve_detail {

// The CG state of a split CG on I + B Bᵀ, rows [rows, n] of one dtype (fp32 or fp64) on one device, contiguous.
struct SplitCgState {
  at::Tensor p;   // search directions
  at::Tensor r;   // residuals (in the preconditioned space)
  at::Tensor x;   // the iterates, in the original unknowns
  at::Tensor rz;  // [rows]: r · r
};

// One step, given the passes' outputs f = C⁻¹ L_TS L_TSᵀ C⁻ᵀ p on the kept entries (the forward pass; its pruned
// entries are ignored) and y = C⁻ᵀ p (the backward pass), with kept [rows, n] 0/1 and active [rows] (bool):
//   q = p − kept ∘ f,  α = rz / (p · q) (0 where the row is not active or p · q ≤ 0),
//   x += α y,  r −= α q,  β = (r · r) / rz (0 where not active or rz ≤ 0),  p = r + β p,  rz = r · r.
void split_cg_step(SplitCgState& state, const at::Tensor& f, const at::Tensor& y, const at::Tensor& kept,
                   const at::Tensor& active);

// The same as ATen operations on any device (several passes over the arrays).
void split_cg_step_reference(SplitCgState& state, const at::Tensor& f, const at::Tensor& y, const at::Tensor& kept,
                             const at::Tensor& active);

}  // namespace optima::solve_detail
