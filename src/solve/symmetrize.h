// The Hessian as the solvers read it: (H + Hᵀ) / 2 in fp64, optionally with its inputs reordered. Accumulated in
// fp32, H is symmetric only up to round-off, and the solvers read one triangle or the other. The CPU kernel
// (symmetrize_cpu.cpp) does the conversion, the reordering and the symmetrization in two passes over cache-sized
// tiles; ATen's composition (a conversion, a gather with two index tensors, a transposed add) made five passes, two of
// them across rows, and took 0.17 s of a 7 s fc2 solve at n = 3072. Other devices run that composition
// (symmetrized_fp64_reference), which is also what the tests compare the kernel with.
#pragma once

#include <ATen/core/Tensor.h>

namespace optima::solve_detail {

// (H + Hᵀ) / 2 in fp64 for h [n, n] (fp32 or fp64), with rows and columns in `order` (a permutation of [0, n), long;
// undefined: as given): out[i][j] = (h[o_i][o_j] + h[o_j][o_i]) / 2.
at::Tensor symmetrized_fp64(const at::Tensor& h, const at::Tensor& order = at::Tensor());

// The same as ATen operations, on any device.
at::Tensor symmetrized_fp64_reference(const at::Tensor& h, const at::Tensor& order = at::Tensor());

}  // namespace optima::solve_detail
