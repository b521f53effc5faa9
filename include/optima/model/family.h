// A model family: everything optima knows about one decoder-only architecture, implemented in one file under
// src/model/families/ and registered by model_type in one table (src/model/families/registry.cpp).
//
// A family reads its shape from config.json, lists a block's prunable linear layers and the input site each reads,
// names every tensor, and runs the forward pass (embedding, one block with a hook on each input site, logits). It
// owns its whole block forward, so a family with other norms, a fused projection or a different attention adds a
// file and its entry in the registry without touching shared code; the shared pieces (norms, rotary embeddings,
// causal attention) are helpers it may call (src/model/families/ops.h).
//
// Parsing and the forward pass share one file, so families need LibTorch and are part of optima_lib, not of the
// LibTorch-free optima_base. Keeping a family in one file is worth that: clang's libFuzzer with ASan and UBSan
// compiles the family files against LibTorch's headers and links LibTorch (uninstrumented, and never called by the
// config parsing it fuzzes), so the config fuzzer (tests/fuzz) still reaches every family's config code.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "optima/core/error.h"
#include "optima/io/model_config.h"
#include "optima/model/arch.h"
#include "optima/model/input_site.h"

namespace optima {

// One block's weights by name relative to the block ("self_attn.q_proj.weight", ...), on the run device.
struct BlockWeights {
  int64_t index = 0;
  std::map<std::string, at::Tensor> tensors;
  const at::Tensor& get(const std::string& name) const;
  // nullptr-equivalent: an undefined tensor when absent (optional biases).
  at::Tensor find(const std::string& name) const;
};

// Called with the input [batch, seq, in_features] of each linear site; may be used to accumulate statistics.
using SiteHook = std::function<void(InputSite site, const at::Tensor& input)>;

// The global tensors (Family::global_tensors) by full name, on the run device in the compute dtype.
using GlobalWeights = std::map<std::string, at::Tensor>;

// The forward pass of one loaded model, with what the family keeps per model (its global tensors, LLaMA's rotary
// frequencies). Inputs arrive on the run device in the compute dtype (DecoderModel sees to that).
class FamilyForward {
 public:
  virtual ~FamilyForward() = default;
  // Token ids [batch, seq] (int64, checked to be in the vocabulary) -> hidden states entering block 0.
  virtual at::Tensor embed(const at::Tensor& tokens) const = 0;
  // One block: hidden [batch, seq, hidden] -> the same; `hook` (possibly empty) sees each input site's activation.
  virtual at::Tensor block(const BlockWeights& block, const at::Tensor& hidden, const SiteHook& hook) const = 0;
  // Hidden states after the last block -> logits [batch, seq, vocab] in the compute dtype.
  virtual at::Tensor logits(const at::Tensor& hidden) const = 0;
};

class Family {
 public:
  virtual ~Family() = default;

  // The family's name as `optima inspect` reports it ("opt", "llama").
  virtual std::string_view name() const = 0;
  // Fills `shape` (whose model_type and family are set) from the family's keys of config.json, settings included;
  // a missing, mistyped or inconsistent key is an input error naming the key and the file.
  virtual void read_shape(const ModelConfig& config, ModelShape& shape) const = 0;
  // The block's prunable linear layers in forward order.
  virtual std::vector<LinearLayer> linear_layers(const ModelShape& shape) const = 0;
  // The prefix of every tensor name of block `block`, ending in ".".
  virtual std::string block_prefix(const ModelShape& shape, int64_t block) const = 0;
  // The tensors of block `block` and those outside the blocks, in the order checkpoints are written.
  virtual std::vector<ExpectedTensor> block_tensors(const ModelShape& shape, int64_t block) const = 0;
  virtual std::vector<ExpectedTensor> global_tensors(const ModelShape& shape) const = 0;
  // The forward pass of a model of this shape whose global tensors are `globals`, computing on `device`.
  virtual std::unique_ptr<FamilyForward> make_forward(const ModelShape& shape, GlobalWeights globals,
                                                      c10::Device device) const = 0;
};

// The registered family serving `model_type`; nullptr when there is none.
const Family* find_family(std::string_view model_type);

// The family-specific settings of `shape`, as its family's read_shape made them.
template <class Settings>
const Settings& family_settings(const ModelShape& shape) {
  const auto* settings = dynamic_cast<const Settings*>(shape.settings.get());
  OPTIMA_ASSERT(settings != nullptr);
  return *settings;
}

}  // namespace optima
