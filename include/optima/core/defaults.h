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
// The calibration sampling rule (text/calibration.h): auto takes the reference rule when at least nsamples documents
// are longer than seqlen, else the concatenated one.
inline constexpr std::string_view kDefaultCalibRule = "auto";
// SparseGPT: damping of 1% of mean diag(H), lazy updates in blocks of 128 columns.
inline constexpr double kDefaultPercdamp = 0.01;
inline constexpr int64_t kDefaultBlocksize = 128;
// The sparsity of an unstructured pattern when none is given.
inline constexpr double kDefaultSparsity = 0.5;

// Thanos: rows whose per-block removal systems are gathered and solved together (bounds the memory of the padded
// systems, rows x |S|^2; the result does not depend on it). Damping and column block are SparseGPT's settings.
inline constexpr int64_t kThanosSolveRows = 1024;

// ADMM selector (Boza 2024), the reference's fixed constants: damping of 10% of mean diag of the normalised Gram
// matrix, 20 iterations of which the first 15 re-choose the mask, penalty rho = 1, and the absolute epsilon added
// to sqrt(H_jj). --percdamp and --blocksize do not apply to it.
inline constexpr double kAdmmPercdamp = 0.1;
inline constexpr int64_t kAdmmIterations = 20;
inline constexpr int64_t kAdmmMaskIterations = 15;
inline constexpr double kAdmmRho = 1.0;
inline constexpr double kAdmmEps = 1e-8;
// OWL (Yin et al. 2024): per-block sparsities spread over 2·lambda around the target, from each block's share of
// weights whose Wanda score exceeds threshold × the block's mean score. The README's LLaMA commands at 70% use
// M = 5, lambda = 0.08 (the reference's argparse default M = 3 is not what its published runs used).
inline constexpr double kDefaultOwlLambda = 0.08;
inline constexpr double kDefaultOwlThreshold = 5.0;
// OWL's floor for a block whose spread sparsity would be <= 0 (the reference's Wanda and SparseGPT variants).
inline constexpr double kOwlSparsityFloor = 0.01;

// OPTIMA's exact solve: relative damping of H (solve/row_solver.h says how it was chosen), the memory of one chunk
// of gathered row systems, and the conjugate-gradient solver's tolerance and iteration budget.
inline constexpr double kDefaultRowSolveDamp = 1e-6;
inline constexpr std::string_view kDefaultQpMemory = "1GiB";
// The iterative row solver's relative KKT tolerance (also the exact solver's polishing tolerance): the 1e-8 the exact
// optimum is held to. Every row's residual is measured in fp64 at the end (its own rounding is orders of magnitude
// smaller) and the layer is not converged above it. A tenfold margin (1e-9) cost 15-20% more iterations and moved
// no reconstruction error of block 0 of a 16-window OPT-125M-shaped prune by more than 3e-12 of itself (README,
// "Exact or iterative").
inline constexpr double kDefaultQpTolerance = 1e-8;
inline constexpr int64_t kDefaultQpMaxIterations = 2000;

// Checkpoints: transformers' default shard size, "5GB".
inline constexpr std::string_view kDefaultMaxShardSize = "5GB";
inline constexpr uint64_t kDefaultMaxShardBytes = 5'000'000'000;

// Evaluation under the WikiText-2 protocol.
inline constexpr int64_t kDefaultEvalSeqlen = 2048;
// How the evaluation file is read (eval/perplexity.h): auto is JSON Lines for .jsonl, plain lines otherwise.
inline constexpr std::string_view kDefaultEvalTextFormat = "auto";

// `optima check`: relative tolerances per metric kind (README, "CI regression runs": repeated runs with the same
// settings give bit-identical reports and weights; 1 against 2 threads moved perplexity by 7.3e-6 and per-layer
// errors by at most 1.26%, on the tiniest error (6e-6), and no sparsity; these leave a margin of 4x and more).
// Time and memory vary with the machine and its load: compared only when asked for, with these tolerances.
inline constexpr double kDefaultCheckPerplexityTolerance = 1e-3;
inline constexpr double kDefaultCheckErrorTolerance = 5e-2;
inline constexpr double kDefaultCheckSparsityTolerance = 1e-4;
inline constexpr double kDefaultCheckTimeTolerance = 1.0;
inline constexpr double kDefaultCheckMemoryTolerance = 0.25;
// Windows per forward call (prune and eval) when --batch-size is 0, its default: as many as this much memory holds
// for one batch's pass through a block (prune/block_runner.h). Small models then run dozens of windows per call
// instead of paying each operation's fixed cost per window; a 7B model's 2048-token window alone exceeds it.
inline constexpr int64_t kDefaultBatchSize = 0;
inline constexpr uint64_t kDefaultBatchMemory = 256ull << 20;

}  // namespace optima
