// The forward pass of a decoder-only model, one block at a time, for whichever family its config.json names.
//
// A DecoderModel holds only the small global tensors (embeddings, final norm, head); blocks are loaded on demand
// from the mapped checkpoint, run, and dropped, so memory stays at about one block plus the activations. It loads
// and checks weights, and hands the computing to the model's family (model/family.h). Hooks see the input of every
// distinct linear site (InputSite: the attention input for q/k/v, the attention output for o_proj/out_proj, the MLP
// input for fc1/gate/up, the MLP hidden activation for fc2/down) — the activations whose statistics pruning needs.
//
// Numerics follow transformers: norms and softmax in fp32 whatever the weight dtype, rotary embeddings in the
// rotate-half layout computed in fp32, OPT's learned positions offset by 2.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

#include "optima/io/checkpoint.h"
#include "optima/model/arch.h"
#include "optima/model/family.h"

namespace optima {

struct RunOptions {
  c10::Device device = c10::Device(c10::kCPU);
  // Compute dtype of weights and activations; Undefined: default_compute_dtype() of the checkpoint's.
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  // Off: every weight is checked when loaded, and one holding NaN or Inf (in the file, or after the cast to `dtype`)
  // is a numeric error naming the file and tensor, before it can poison every later activation.
  bool allow_non_finite = false;
};

// The compute dtype when none is asked for: the checkpoint's, but float32 for a float16 or bfloat16 checkpoint on
// the CPU, whose half-precision matrix products run at a fraction of the float32 rate (opt-small, float16: 8.8 s of
// forward passes against 2.7 s in float32 on 2 threads). Outputs keep the checkpoint's dtype either way.
c10::ScalarType default_compute_dtype(c10::ScalarType stored, c10::Device device);

class DecoderModel {
 public:
  // Validates the checkpoint against its config and loads the global tensors.
  DecoderModel(const Checkpoint& checkpoint, RunOptions options = {});

  const ModelShape& shape() const { return shape_; }
  const RunOptions& options() const { return options_; }
  c10::ScalarType dtype() const { return dtype_; }
  const Checkpoint& checkpoint() const { return checkpoint_; }

  // Token ids [batch, seq] (int64) -> hidden states entering block 0, [batch, seq, hidden].
  at::Tensor embed(const at::Tensor& ids) const;
  BlockWeights load_block(int64_t index) const;
  // One block; `hook` (optional) sees each linear site's input.
  at::Tensor block_forward(const BlockWeights& block, const at::Tensor& hidden, const SiteHook& hook = {}) const;
  // Hidden states after the last block -> logits [batch, seq, vocab] (fp32).
  at::Tensor logits(const at::Tensor& hidden) const;
  // Whole model, for tests and short inputs: ids [batch, seq] -> logits.
  at::Tensor forward(const at::Tensor& ids) const;

  // Applies one linear layer of a block (weight [out,in], optional bias) to x [..., in].
  static at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

 private:
  at::Tensor load(const std::string& name) const;

  const Checkpoint& checkpoint_;
  ModelShape shape_;
  RunOptions options_;
  c10::ScalarType dtype_;
  std::unique_ptr<FamilyForward> forward_;  // the family's forward pass, holding the global tensors
};

}  // namespace optima
