// Runs a set of token windows through a model block by block: their hidden states live between blocks in an
// ActivationStore (in memory, or mapped from a file past a memory budget), a block's site inputs can be observed
// (to accumulate statistics), and a block replaces them by its outputs. Pruning and evaluation share it, so both
// honour --activation-memory.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>

#include "optima/model/decoder.h"
#include "optima/prune/activations.h"

namespace optima {

// Windows per forward call: `requested` when positive; else as many as kDefaultBatchMemory holds for one batch's pass
// through a block (about seqlen·(5h + 3i) activations and heads·seqlen² attention scores per window, in bytes of
// `dtype`, at least 1), spread evenly over the batches that `windows` then need. It depends only on the model's
// shape and the run's settings, so a resumed run batches its windows as the interrupted one did.
int64_t forward_batch_size(int64_t requested, const ModelShape& shape, int64_t seqlen, int64_t windows,
                           c10::ScalarType dtype);

class BlockRunner {
 public:
  // `windows` windows of `seqlen` tokens in batches of `batch_size`; past `budget_bytes` they are kept in
  // `spill_file` (created, and removed with the runner).
  BlockRunner(const DecoderModel& model, int64_t windows, int64_t seqlen, int64_t batch_size, uint64_t budget_bytes,
              const std::filesystem::path& spill_file);

  ActivationStore& activations() { return *store_; }
  const ActivationStore& activations() const { return *store_; }
  size_t batches() const { return store_->size(); }
  int64_t batch_size() const { return batch_size_; }

  // The hidden states entering block 0 of `ids` [windows, seqlen] (int64 token ids).
  void embed(const at::Tensor& ids);
  // Runs every batch through `block` as it is, showing `hook` each site's input; the hidden states stay.
  // `before_batch` (optional) runs first for each batch: a place to stop on a signal.
  void observe(const BlockWeights& block, const SiteHook& hook, const std::function<void()>& before_batch = {});
  // Replaces every batch by `block`'s output. With `check_finite`, NaN or Inf in an output is a numeric error
  // naming the block.
  void propagate(const BlockWeights& block, bool check_finite, const std::function<void()>& before_batch = {});

 private:
  const DecoderModel& model_;
  int64_t batch_size_;
  std::unique_ptr<ActivationStore> store_;
};

}  // namespace optima
