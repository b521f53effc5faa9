// The forward pass of the supported decoder-only families, one block at a time.
//
// A DecoderModel holds only the small global tensors (embeddings, final norm, head); blocks are loaded on demand
// from the mapped checkpoint, run, and dropped, so memory stays at about one block plus the activations. Hooks see
// the input of every distinct linear site ("attn_in" for q/k/v, "attn_out" for o/out_proj, "mlp_in" for
// fc1/gate/up, "mlp_hidden" for fc2/down) — the activations whose statistics pruning needs.
//
// Numerics follow transformers: norms and softmax in fp32 whatever the weight dtype, rotary embeddings in the
// rotate-half layout computed in fp32, OPT's learned positions offset by 2.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <string>

#include "optima/io/checkpoint.h"
#include "optima/model/arch.h"

namespace optima {

struct RunOptions {
  c10::Device device = c10::Device(c10::kCPU);
  // Compute dtype of weights and activations; Undefined keeps the checkpoint's floating-point dtype.
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  // Off: every weight is checked when loaded, and one holding NaN or Inf (in the file, or after the cast to `dtype`)
  // is a numeric error naming the file and tensor, before it can poison every later activation.
  bool allow_non_finite = false;
};

// One block's weights by name relative to the block ("self_attn.q_proj.weight", ...), on the run device.
struct BlockWeights {
  int64_t index = 0;
  std::map<std::string, at::Tensor> tensors;
  const at::Tensor& get(const std::string& name) const;
  // nullptr-equivalent: an undefined tensor when absent (optional biases).
  at::Tensor find(const std::string& name) const;
};

// Called with the input [batch, seq, in_features] of each linear site; may be used to accumulate statistics.
using SiteHook = std::function<void(const std::string& site, const at::Tensor& input)>;

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
  at::Tensor attention(const BlockWeights& b, const at::Tensor& x, const SiteHook& hook) const;
  at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;

  const Checkpoint& checkpoint_;
  ModelShape shape_;
  RunOptions options_;
  c10::ScalarType dtype_;
  std::map<std::string, at::Tensor> globals_;
  at::Tensor inv_freq_;  // LLaMA family: rotary inverse frequencies [head_dim / 2], fp32
};

}  // namespace optima
