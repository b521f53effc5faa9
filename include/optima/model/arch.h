// Architectures of the supported model families as shapes and tensor layouts: what config.json says, which linear
// layers a decoder block has and which input site each reads, and the name and shape of every tensor.
//
// Each family lives in one file under src/model/families/, implementing model/family.h, and is registered by
// model_type in src/model/families/registry.cpp. The functions here dispatch to the shape's family, so that the
// rest of optima never spells out a layer or tensor name.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "optima/io/model_config.h"
#include "optima/model/input_site.h"

namespace optima {

class Checkpoint;
class Family;

// Settings that only one family reads (OPT's layer-norm placement, LLaMA's rotary scaling, ...). Each family derives
// its own in its own file, so that a new family's keys need no new field in ModelShape.
struct FamilySettings {
  virtual ~FamilySettings() = default;
};

// What config.json says about a model, resolved with its family's defaults.
struct ModelShape {
  std::string model_type;
  const Family* family = nullptr;  // set by read_model_shape; the registry's families live as long as the program
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t max_positions = 0;
  bool tie_word_embeddings = true;
  // The checkpoint holds more than the text model (a multimodal model's vision tower and projector): every tensor the
  // family does not declare is copied to a pruned output unchanged, so the output loads as the original model did.
  bool copy_other_tensors = false;
  std::shared_ptr<const FamilySettings> settings;  // the family's own, made by its read_shape
};

// Reads and checks the architecture keys of config.json; an unknown model_type or a missing or inconsistent key is
// an input error naming the key and the file.
ModelShape read_model_shape(const ModelConfig& config);

// model_type values optima can run, in registry order, for messages and --help.
std::vector<std::string> supported_model_types();

// A prunable linear layer of a decoder block.
struct LinearLayer {
  std::string name;                              // relative to the block, e.g. "self_attn.q_proj"
  InputSite input = InputSite::kAttentionInput;  // layers with the same site share one Hessian
  int64_t out_features = 0;
  int64_t in_features = 0;
  bool bias = false;
};

// The block's prunable linear layers in forward order.
std::vector<LinearLayer> linear_layers(const ModelShape& shape);
// "model.decoder.layers.3." / "model.layers.3."
std::string block_prefix(const ModelShape& shape, int64_t block);

enum class TensorInit { kNormal, kOnes, kZeros };

struct ExpectedTensor {
  std::string name;  // full canonical name
  std::vector<int64_t> shape;
  TensorInit init = TensorInit::kNormal;  // how a random model of this shape initialises it
};

// Tensors outside the blocks: embeddings, positions, projections, final norm, an untied head. The order of these
// lists is the order in which checkpoints are written, so it is part of optima's output.
std::vector<ExpectedTensor> global_tensors(const ModelShape& shape);
// Every tensor a checkpoint of this shape must hold: the global tensors, then each block's.
std::vector<ExpectedTensor> expected_tensors(const ModelShape& shape);
std::vector<ExpectedTensor> block_tensors(const ModelShape& shape, int64_t block);

// Checks that the checkpoint holds every expected tensor with the expected shape and a floating dtype; names the
// tensor, expected and found shapes on failure.
void validate_checkpoint(const Checkpoint& checkpoint, const ModelShape& shape);

}  // namespace optima
