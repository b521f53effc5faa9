// The steps of the pruning pipeline that a job of many processes shares out (dist/distributed.h): each process
// accumulates statistics over its share of the calibration windows and the shares are pooled; each process solves
// its share of a layer's reconstruction rows and the rows are gathered, so every process holds the same statistics
// and weights as one process would, up to round-off. With one process both steps are the plain ones.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string_view>

#include "optima/dist/distributed.h"
#include "optima/solve/row_solver.h"
#include "optima/stats/accumulator.h"

namespace optima {

// Pools `stats`, accumulated over this process's share of the samples, with the other processes' (an all-reduce).
void pool_statistics(const Distributed& dist, InputStatistics& stats, std::string_view what);

// Solves the rows [first, last) of a layer: dense_rows, pruned_rows and start_rows are those rows of the dense
// weight, the mask and the solver's start point (solve/row_solver.h).
using RowSolver = std::function<RowSolveResult(const at::Tensor& dense_rows, const at::Tensor& pruned_rows,
                                               const at::Tensor& start_rows, const RowSolveOptions& options)>;

// Each process solves its share of the rows and gets every row back. The damping is the largest any share needed
// (one process would have solved the whole layer again at it), so a share solved with less is solved again; the
// counters are summed over the shares and the residuals and iteration counts are the largest. The exact solver's
// rows are independent, so the result is the single-process one up to round-off; conjugate gradients stop per
// share, so their rows agree only to within the solver's tolerance.
RowSolveResult solve_rows_shared(const Distributed& dist, const RowSolver& solve, const at::Tensor& dense,
                                 const at::Tensor& pruned, const at::Tensor& start, const RowSolveOptions& options,
                                 std::string_view what);

}  // namespace optima
