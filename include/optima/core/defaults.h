// Every default setting of optima in one place: the field's published pruning protocol (SparseGPT, Wanda and OPTIMA
// papers) and the tool's own choices. Settings structs, the command line and --help read them from here.
#pragma once

#include <cstdint>
#include <string_view>

namespace optima {

// Calibration: 128 windows of 2048 tokens drawn with seed 0.
inline constexpr int64_t kDefaultNsamples = 128;
inline constexpr int64_t kDefaultSeqlen = 2048;
inline constexpr uint64_t kDefaultSeed = 0;
// SparseGPT: damping of 1% of mean diag(H), lazy updates in blocks of 128 columns.
inline constexpr double kDefaultPercdamp = 0.01;
inline constexpr int64_t kDefaultBlocksize = 128;
// The sparsity of an unstructured pattern when none is given.
inline constexpr double kDefaultSparsity = 0.5;

// OPTIMA's exact solve: relative damping of H (solve/row_solver.h says how it was chosen), the memory of one chunk
// of gathered row systems, and the conjugate-gradient solver's tolerance and iteration budget.
inline constexpr double kDefaultRowSolveDamp = 1e-6;
inline constexpr std::string_view kDefaultQpMemory = "1GiB";
// The iterative row solver's relative KKT tolerance: below the 1e-8 the exact optimum is held to, with a margin for
// the final fp64 residual's own rounding.
inline constexpr double kDefaultQpTolerance = 1e-9;
inline constexpr int64_t kDefaultQpMaxIterations = 2000;

// Checkpoints: transformers' default shard size, "5GB".
inline constexpr std::string_view kDefaultMaxShardSize = "5GB";
inline constexpr uint64_t kDefaultMaxShardBytes = 5'000'000'000;

// Evaluation under the WikiText-2 protocol.
inline constexpr int64_t kDefaultEvalSeqlen = 2048;
inline constexpr int64_t kDefaultEvalBatchSize = 8;

}  // namespace optima
