// Architecture specifications of the supported model families: the one place that knows tensor names, shapes,
// which linear layers a decoder block has, and which of them read the same input.
//
// Families: "opt" (model_type opt) and "llama" (model_type llama, mistral, qwen2). Everything else in optima asks
// these functions rather than spelling out layer names.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "optima/io/model_config.h"

namespace optima {

class Checkpoint;

enum class Family { kOpt, kLlama };

// What config.json says about a model, resolved with each family's defaults.
struct ModelShape {
  std::string model_type;
  Family family = Family::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t max_positions = 0;
  bool tie_word_embeddings = true;
  // OPT
  int64_t word_embed_proj_dim = 0;
  bool layer_norm_before = true;
  bool final_layer_norm = true;
  bool linear_bias = true;
  // LLaMA family
  bool qkv_bias = false;  // Qwen2, or attention_bias
  bool o_bias = false;    // attention_bias
  bool mlp_bias = false;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  std::string rope_type = "default";  // "default", "linear" or "llama3"
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0;           // llama3
  double rope_high_freq_factor = 4.0;          // llama3
  int64_t rope_original_max_positions = 8192;  // llama3
};

// Reads and checks the architecture keys of config.json; an unknown model_type or a missing or inconsistent key is
// an input error naming the key and the file.
ModelShape read_model_shape(const ModelConfig& config);

std::string family_name(Family family);
// model_type values optima can run, for messages and --help.
std::vector<std::string> supported_model_types();

// A prunable linear layer of a decoder block.
struct LinearLayer {
  std::string name;   // relative to the block, e.g. "self_attn.q_proj"
  std::string input;  // the input site it reads; layers with the same site share one Hessian
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

// Tensors outside the blocks: embeddings, positions, projections, final norm, an untied head.
std::vector<ExpectedTensor> global_tensors(const ModelShape& shape);
// Every tensor a checkpoint of this shape must hold: the global tensors, then each block's.
std::vector<ExpectedTensor> expected_tensors(const ModelShape& shape);
std::vector<ExpectedTensor> block_tensors(const ModelShape& shape, int64_t block);

// Checks that the checkpoint holds every expected tensor with the expected shape and a floating dtype; names the
// tensor, expected and found shapes on failure.
void validate_checkpoint(const Checkpoint& checkpoint, const ModelShape& shape);

}  // namespace optima
