// Mask selectors: given a linear layer's weight and the statistics of its input, choose which weights to zero
// (magnitude, Wanda, SparseGPT), following the reference implementations exactly (docs: algorithms.md §5).
//
// Selectors are device-generic: the same ATen code runs on CPU and CUDA tensors, and results come back on the
// weight's device. They compute in fp32 as the reference code does, except that float64 weights are processed in
// float64 (used by the tests to check against float64 references at tight tolerances).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "optima/select/pattern.h"

namespace optima {

// What the pipeline accumulated for one layer's input.
struct LayerStats {
  at::Tensor hessian;      // [in, in] fp32 (or fp64): H = (2/n) sum x x^T, SparseGPT's scaling; may be undefined
  at::Tensor act_sq_norm;  // [in] fp32: Wanda's running mean of squared column norms; may be undefined
};

struct SelectorOptions {
  SparsityPattern pattern;
  double percdamp = 0.01;   // SparseGPT: damping added to diag(H), as a fraction of mean(diag H)
  int64_t blocksize = 128;  // SparseGPT: columns per lazy-update block
};

struct Selection {
  at::Tensor pruned;            // bool [out, in], true where the weight is zeroed
  at::Tensor weight;            // output weights (fp32; fp64 for fp64 input): W with pruned entries 0, or
                                // SparseGPT's OBS-updated W (pruned entries exactly 0)
  double damping = 0;           // damping actually added to diag(H) (SparseGPT), for the report
  int64_t damping_retries = 0;  // how many times the damping was raised because a Cholesky factorization failed
};

class MaskSelector {
 public:
  virtual ~MaskSelector() = default;
  virtual std::string name() const = 0;  // "magnitude", "wanda", "sparsegpt"
  virtual bool needs_hessian() const = 0;
  virtual bool needs_act_norms() const = 0;
  // weight: [out, in], any floating dtype, any device; the statistics the selector needs must be defined and match.
  virtual Selection select(const at::Tensor& weight, const LayerStats& stats) const = 0;
};

// The selector names make_selector accepts, in the order error messages list them.
inline constexpr std::string_view kSelectorNames[] = {"magnitude", "wanda", "sparsegpt"};

// Usage error for an unknown name (listing the known ones) or invalid options (percdamp < 0, blocksize < 1,
// a SparseGPT blocksize that is not a multiple of M for N:M).
std::unique_ptr<MaskSelector> make_selector(std::string_view name, const SelectorOptions& options);

// The concrete selectors, which make_selector dispatches to (options already validated).
std::unique_ptr<MaskSelector> make_magnitude_selector(const SelectorOptions& options);
std::unique_ptr<MaskSelector> make_wanda_selector(const SelectorOptions& options);
std::unique_ptr<MaskSelector> make_sparsegpt_selector(const SelectorOptions& options);

// SparseGPT's retry policy: after a failed Cholesky factorization the damping is multiplied by 10, at most this
// many times, before the layer is declared numerically hopeless.
inline constexpr int64_t kMaxDampingRetries = 4;

}  // namespace optima
