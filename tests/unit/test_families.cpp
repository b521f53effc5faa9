// The model families and their registry: which model_type values are served and by whom, each family's shape from
// config.json, its linear layers and input sites, and the names, shapes and order of its tensors (the order in
// which checkpoints are written). Families need LibTorch, so these are part of optima_tests.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "optima/io/model_config.h"
#include "optima/model/arch.h"
#include "optima/model/family.h"
#include "test_util.h"

namespace optima::test {
namespace {

ModelConfig config_of(const nlohmann::json& json) {
  return ModelConfig(json, "/models/x/config.json");
}

ModelShape shape_of(const nlohmann::json& json) {
  return read_model_shape(config_of(json));
}

std::string init_name(TensorInit init) {
  switch (init) {
    case TensorInit::kNormal: return "normal";
    case TensorInit::kOnes: return "ones";
    case TensorInit::kZeros: return "zeros";
  }
  return "?";
}

// "name 64x16 normal": one line per tensor, so that a mismatch shows which tensor differs.
std::vector<std::string> describe_tensors(const std::vector<ExpectedTensor>& tensors) {
  std::vector<std::string> out;
  for (const ExpectedTensor& t : tensors)
    out.push_back(fmt::format("{} {} {}", t.name, fmt::join(t.shape, "x"), init_name(t.init)));
  return out;
}

// "self_attn.q_proj attn_in 64x16 bias".
std::vector<std::string> describe_layers(const std::vector<LinearLayer>& layers) {
  std::vector<std::string> out;
  for (const LinearLayer& l : layers)
    out.push_back(fmt::format("{} {} {}x{} {}", l.name, to_string(l.input), l.out_features, l.in_features,
                              l.bias ? "bias" : "nobias"));
  return out;
}

nlohmann::json small_opt() {
  return {{"model_type", "opt"}, {"hidden_size", 16}, {"num_hidden_layers", 2},       {"num_attention_heads", 2},
          {"ffn_dim", 32},       {"vocab_size", 50},  {"max_position_embeddings", 64}};
}

nlohmann::json small_llama() {
  return {{"model_type", "llama"},    {"hidden_size", 64}, {"intermediate_size", 100},     {"num_hidden_layers", 2},
          {"num_attention_heads", 8}, {"vocab_size", 10},  {"max_position_embeddings", 32}};
}

// --- the registry ----------------------------------------------------------------------------------------------

TEST(FamilyRegistry, ListsEveryModelTypeInOrder) {
  EXPECT_EQ(supported_model_types(), (std::vector<std::string>{"opt", "llama", "mistral", "qwen2", "qwen3", "phi3",
                                                               "gemma2", "gemma3_text", "gemma3"}));
}

TEST(FamilyRegistry, EachModelTypeHasItsFamily) {
  const std::vector<std::pair<std::string, std::string>> served = {{"opt", "opt"},       {"llama", "llama"},
                                                                   {"mistral", "llama"}, {"qwen2", "llama"},
                                                                   {"qwen3", "qwen3"},   {"phi3", "phi3"}};
  for (const auto& [model_type, family] : served) {
    const Family* found = find_family(model_type);
    ASSERT_NE(found, nullptr) << model_type;
    EXPECT_EQ(found->name(), family) << model_type;
  }
  EXPECT_EQ(find_family("llama"), find_family("qwen2"));  // one family object serves several model types
  EXPECT_EQ(find_family("gpt_neox"), nullptr);
  EXPECT_EQ(find_family("OPT"), nullptr);
  EXPECT_EQ(find_family(""), nullptr);
}

TEST(FamilyRegistry, ShapeKnowsItsFamily) {
  nlohmann::json j = small_llama();
  for (const char* model_type : {"llama", "mistral", "qwen2"}) {
    j["model_type"] = model_type;
    const ModelShape s = shape_of(j);
    EXPECT_EQ(s.model_type, model_type);
    EXPECT_EQ(s.family, find_family("llama"));
  }
  EXPECT_EQ(shape_of(small_opt()).family->name(), "opt");
}

TEST(FamilyRegistry, UnknownModelTypeNamesFileKeyAndEverySupportedType) {
  nlohmann::json j = small_llama();
  j["model_type"] = "gpt_neox";
  expect_error([&] { shape_of(j); }, ErrorKind::kInput,
               {"/models/x/config.json: key 'model_type'", "unsupported model type",
                "expected one of opt, llama, mistral, qwen2", "found gpt_neox"});
}

// --- OPT ---------------------------------------------------------------------------------------------------------

TEST(OptFamily, LayersSitesAndTensorOrder) {
  const ModelShape s = shape_of(small_opt());
  EXPECT_EQ(s.family->name(), "opt");
  EXPECT_EQ(s.head_dim, 8);
  EXPECT_TRUE(s.tie_word_embeddings);
  EXPECT_EQ(describe_layers(linear_layers(s)), (std::vector<std::string>{
                                                   "self_attn.q_proj attn_in 16x16 bias",
                                                   "self_attn.k_proj attn_in 16x16 bias",
                                                   "self_attn.v_proj attn_in 16x16 bias",
                                                   "self_attn.out_proj attn_out 16x16 bias",
                                                   "fc1 mlp_in 32x16 bias",
                                                   "fc2 mlp_hidden 16x32 bias",
                                               }));
  EXPECT_EQ(block_prefix(s, 1), "model.decoder.layers.1.");
  EXPECT_EQ(describe_tensors(global_tensors(s)), (std::vector<std::string>{
                                                     "model.decoder.embed_tokens.weight 50x16 normal",
                                                     "model.decoder.embed_positions.weight 66x16 normal",
                                                     "model.decoder.final_layer_norm.weight 16 ones",
                                                     "model.decoder.final_layer_norm.bias 16 zeros",
                                                 }));
  EXPECT_EQ(describe_tensors(block_tensors(s, 1)), (std::vector<std::string>{
                                                       "model.decoder.layers.1.self_attn.q_proj.weight 16x16 normal",
                                                       "model.decoder.layers.1.self_attn.q_proj.bias 16 zeros",
                                                       "model.decoder.layers.1.self_attn.k_proj.weight 16x16 normal",
                                                       "model.decoder.layers.1.self_attn.k_proj.bias 16 zeros",
                                                       "model.decoder.layers.1.self_attn.v_proj.weight 16x16 normal",
                                                       "model.decoder.layers.1.self_attn.v_proj.bias 16 zeros",
                                                       "model.decoder.layers.1.self_attn.out_proj.weight 16x16 normal",
                                                       "model.decoder.layers.1.self_attn.out_proj.bias 16 zeros",
                                                       "model.decoder.layers.1.fc1.weight 32x16 normal",
                                                       "model.decoder.layers.1.fc1.bias 32 zeros",
                                                       "model.decoder.layers.1.fc2.weight 16x32 normal",
                                                       "model.decoder.layers.1.fc2.bias 16 zeros",
                                                       "model.decoder.layers.1.self_attn_layer_norm.weight 16 ones",
                                                       "model.decoder.layers.1.self_attn_layer_norm.bias 16 zeros",
                                                       "model.decoder.layers.1.final_layer_norm.weight 16 ones",
                                                       "model.decoder.layers.1.final_layer_norm.bias 16 zeros",
                                                   }));
}

// OPT-350M's variant: post-LayerNorm blocks (and so no final norm), an embedding narrower than the hidden size with
// projections in and out, and here also no biases and an untied head.
TEST(OptFamily, PostLayerNormProjectedUntiedWithoutBiases) {
  nlohmann::json j = small_opt();
  j["do_layer_norm_before"] = false;
  j["word_embed_proj_dim"] = 8;
  j["enable_bias"] = false;
  j["tie_word_embeddings"] = false;
  const ModelShape s = shape_of(j);
  EXPECT_EQ(describe_tensors(global_tensors(s)), (std::vector<std::string>{
                                                     "model.decoder.embed_tokens.weight 50x8 normal",
                                                     "model.decoder.embed_positions.weight 66x16 normal",
                                                     "model.decoder.project_in.weight 16x8 normal",
                                                     "model.decoder.project_out.weight 8x16 normal",
                                                     "lm_head.weight 50x8 normal",
                                                 }));
  EXPECT_EQ(describe_tensors(block_tensors(s, 0)), (std::vector<std::string>{
                                                       "model.decoder.layers.0.self_attn.q_proj.weight 16x16 normal",
                                                       "model.decoder.layers.0.self_attn.k_proj.weight 16x16 normal",
                                                       "model.decoder.layers.0.self_attn.v_proj.weight 16x16 normal",
                                                       "model.decoder.layers.0.self_attn.out_proj.weight 16x16 normal",
                                                       "model.decoder.layers.0.fc1.weight 32x16 normal",
                                                       "model.decoder.layers.0.fc2.weight 16x32 normal",
                                                       "model.decoder.layers.0.self_attn_layer_norm.weight 16 ones",
                                                       "model.decoder.layers.0.self_attn_layer_norm.bias 16 zeros",
                                                       "model.decoder.layers.0.final_layer_norm.weight 16 ones",
                                                       "model.decoder.layers.0.final_layer_norm.bias 16 zeros",
                                                   }));
}

TEST(OptFamily, RejectsWhatItCannotRun) {
  nlohmann::json j = small_opt();
  j["activation_function"] = "gelu";
  expect_error([&] { shape_of(j); }, ErrorKind::kInput,
               {"'activation_function'", "unsupported activation", "expected relu", "found gelu"});
  j = small_opt();
  j["num_attention_heads"] = 3;
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'num_attention_heads'", "must divide hidden_size"});
  j = small_opt();
  j.erase("ffn_dim");
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'ffn_dim'", "missing"});
}

TEST(OptFamily, Opt125mFromThePublishedConfig) {
  const fs::path path = assets_dir() / "configs" / "opt-125m" / "config.json";
  OPTIMA_REQUIRE_ASSET(path);
  const ModelShape s = read_model_shape(ModelConfig::load(path));
  EXPECT_EQ(s.family->name(), "opt");
  EXPECT_EQ(s.num_layers, 12);
  EXPECT_EQ(s.hidden_size, 768);
  EXPECT_EQ(s.intermediate_size, 3072);
  EXPECT_EQ(s.head_dim, 64);
  EXPECT_TRUE(s.tie_word_embeddings);
  const auto layers = linear_layers(s);
  ASSERT_EQ(layers.size(), 6u);
  EXPECT_EQ(layers[0].input, layers[2].input);  // q, k, v share one input
  EXPECT_NE(layers[3].input, layers[0].input);
  // 12 blocks x 16 tensors + embeddings, positions, final norm (2)
  EXPECT_EQ(expected_tensors(s).size(), 12u * 16u + 4u);
  int64_t params = 0;
  for (const auto& t : expected_tensors(s)) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    params += n;
  }
  EXPECT_EQ(params, 125'239'296);  // the published OPT-125M parameter count
}

// --- LLaMA (llama, mistral, qwen2) -------------------------------------------------------------------------------

TEST(LlamaFamily, LayersSitesAndTensorOrder) {
  nlohmann::json j = small_llama();
  j["num_key_value_heads"] = 2;
  const ModelShape s = shape_of(j);
  EXPECT_EQ(s.family->name(), "llama");
  EXPECT_EQ(s.head_dim, 8);
  EXPECT_FALSE(s.tie_word_embeddings);
  EXPECT_EQ(describe_layers(linear_layers(s)), (std::vector<std::string>{
                                                   "self_attn.q_proj attn_in 64x64 nobias",
                                                   "self_attn.k_proj attn_in 16x64 nobias",  // 2 kv heads x 8
                                                   "self_attn.v_proj attn_in 16x64 nobias",
                                                   "self_attn.o_proj attn_out 64x64 nobias",
                                                   "mlp.gate_proj mlp_in 100x64 nobias",
                                                   "mlp.up_proj mlp_in 100x64 nobias",
                                                   "mlp.down_proj mlp_hidden 64x100 nobias",
                                               }));
  EXPECT_EQ(block_prefix(s, 1), "model.layers.1.");
  EXPECT_EQ(describe_tensors(global_tensors(s)), (std::vector<std::string>{
                                                     "model.embed_tokens.weight 10x64 normal",
                                                     "model.norm.weight 64 ones",
                                                     "lm_head.weight 10x64 normal",
                                                 }));
  EXPECT_EQ(describe_tensors(block_tensors(s, 1)), (std::vector<std::string>{
                                                       "model.layers.1.self_attn.q_proj.weight 64x64 normal",
                                                       "model.layers.1.self_attn.k_proj.weight 16x64 normal",
                                                       "model.layers.1.self_attn.v_proj.weight 16x64 normal",
                                                       "model.layers.1.self_attn.o_proj.weight 64x64 normal",
                                                       "model.layers.1.mlp.gate_proj.weight 100x64 normal",
                                                       "model.layers.1.mlp.up_proj.weight 100x64 normal",
                                                       "model.layers.1.mlp.down_proj.weight 64x100 normal",
                                                       "model.layers.1.input_layernorm.weight 64 ones",
                                                       "model.layers.1.post_attention_layernorm.weight 64 ones",
                                                   }));
}

TEST(LlamaFamily, Qwen2HasQkvBiasesAndATiedHeadWhenAsked) {
  nlohmann::json j = small_llama();
  j["model_type"] = "qwen2";
  j["tie_word_embeddings"] = true;
  j["head_dim"] = 4;  // explicit, unlike hidden_size / heads
  const ModelShape s = shape_of(j);
  EXPECT_EQ(describe_tensors(global_tensors(s)), (std::vector<std::string>{
                                                     "model.embed_tokens.weight 10x64 normal",
                                                     "model.norm.weight 64 ones",
                                                 }));
  EXPECT_EQ(describe_tensors(block_tensors(s, 0)), (std::vector<std::string>{
                                                       "model.layers.0.self_attn.q_proj.weight 32x64 normal",
                                                       "model.layers.0.self_attn.q_proj.bias 32 zeros",
                                                       "model.layers.0.self_attn.k_proj.weight 32x64 normal",
                                                       "model.layers.0.self_attn.k_proj.bias 32 zeros",
                                                       "model.layers.0.self_attn.v_proj.weight 32x64 normal",
                                                       "model.layers.0.self_attn.v_proj.bias 32 zeros",
                                                       "model.layers.0.self_attn.o_proj.weight 64x32 normal",
                                                       "model.layers.0.mlp.gate_proj.weight 100x64 normal",
                                                       "model.layers.0.mlp.up_proj.weight 100x64 normal",
                                                       "model.layers.0.mlp.down_proj.weight 64x100 normal",
                                                       "model.layers.0.input_layernorm.weight 64 ones",
                                                       "model.layers.0.post_attention_layernorm.weight 64 ones",
                                                   }));
}

TEST(LlamaFamily, MistralIsLlamasLayoutAndBiasKeysApply) {
  nlohmann::json j = small_llama();
  const std::vector<std::string> llama = describe_tensors(expected_tensors(shape_of(j)));
  j["model_type"] = "mistral";
  EXPECT_EQ(describe_tensors(expected_tensors(shape_of(j))), llama);
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  for (const LinearLayer& l : linear_layers(shape_of(j))) EXPECT_TRUE(l.bias) << l.name;
}

TEST(LlamaFamily, GroupedQueryHeadsMustDivide) {
  nlohmann::json j = small_llama();
  j["num_key_value_heads"] = 3;
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'num_key_value_heads'", "divide", "found 3"});
  j["num_key_value_heads"] = 2;
  j["hidden_act"] = "gelu";
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'hidden_act'", "unsupported activation", "found gelu"});
}

TEST(LlamaFamily, RotaryScalingIsCheckedInEitherSpelling) {
  nlohmann::json j = small_llama();
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput,
               {"'rope_parameters'.rope_type", "unsupported rotary scaling", "found yarn"});
  j.erase("rope_parameters");
  j["rope_scaling"] = {{"type", "linear"}, {"factor", -2.0}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'rope_scaling'.factor", "must be positive"});
  j["rope_scaling"]["factor"] = 2.0;
  EXPECT_NO_THROW(shape_of(j));
}

// --- Qwen3 ---------------------------------------------------------------------------------------------------------

nlohmann::json small_qwen3() {
  return {{"model_type", "qwen3"},
          {"hidden_size", 64},
          {"intermediate_size", 100},
          {"num_hidden_layers", 3},
          {"num_attention_heads", 8},
          {"num_key_value_heads", 2},
          {"head_dim", 16},
          {"vocab_size", 10},
          {"max_position_embeddings", 32},
          {"tie_word_embeddings", true}};
}

TEST(Qwen3Family, LayersSitesAndTensorOrder) {
  const ModelShape s = shape_of(small_qwen3());
  EXPECT_EQ(s.family->name(), "qwen3");
  EXPECT_EQ(s.head_dim, 16);  // explicit, unlike hidden_size / heads = 8
  EXPECT_TRUE(s.tie_word_embeddings);
  EXPECT_EQ(describe_layers(linear_layers(s)), (std::vector<std::string>{
                                                   "self_attn.q_proj attn_in 128x64 nobias",  // 8 heads x 16
                                                   "self_attn.k_proj attn_in 32x64 nobias",   // 2 kv heads x 16
                                                   "self_attn.v_proj attn_in 32x64 nobias",
                                                   "self_attn.o_proj attn_out 64x128 nobias",
                                                   "mlp.gate_proj mlp_in 100x64 nobias",
                                                   "mlp.up_proj mlp_in 100x64 nobias",
                                                   "mlp.down_proj mlp_hidden 64x100 nobias",
                                               }));
  EXPECT_EQ(block_prefix(s, 2), "model.layers.2.");
  EXPECT_EQ(describe_tensors(global_tensors(s)), (std::vector<std::string>{
                                                     "model.embed_tokens.weight 10x64 normal",
                                                     "model.norm.weight 64 ones",
                                                 }));
  EXPECT_EQ(describe_tensors(block_tensors(s, 2)), (std::vector<std::string>{
                                                       "model.layers.2.self_attn.q_proj.weight 128x64 normal",
                                                       "model.layers.2.self_attn.k_proj.weight 32x64 normal",
                                                       "model.layers.2.self_attn.v_proj.weight 32x64 normal",
                                                       "model.layers.2.self_attn.o_proj.weight 64x128 normal",
                                                       "model.layers.2.mlp.gate_proj.weight 100x64 normal",
                                                       "model.layers.2.mlp.up_proj.weight 100x64 normal",
                                                       "model.layers.2.mlp.down_proj.weight 64x100 normal",
                                                       "model.layers.2.self_attn.q_norm.weight 16 ones",
                                                       "model.layers.2.self_attn.k_norm.weight 16 ones",
                                                       "model.layers.2.input_layernorm.weight 64 ones",
                                                       "model.layers.2.post_attention_layernorm.weight 64 ones",
                                                   }));
}

TEST(Qwen3Family, AttentionBiasUntiedHeadAndDefaultHeadDim) {
  nlohmann::json j = small_qwen3();
  j["attention_bias"] = true;
  j["tie_word_embeddings"] = false;
  j.erase("head_dim");
  const ModelShape s = shape_of(j);
  EXPECT_EQ(s.head_dim, 128);  // Qwen3Config's default, not hidden_size / heads
  for (const LinearLayer& l : linear_layers(s)) EXPECT_EQ(l.bias, l.name.rfind("self_attn.", 0) == 0) << l.name;
  EXPECT_EQ(describe_tensors(global_tensors(s)).back(), "lm_head.weight 10x64 normal");
}

TEST(Qwen3Family, RefusesWhatItCannotRunNamingKeyAndValue) {
  nlohmann::json j = small_qwen3();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput,
               {"/models/x/config.json: key 'rope_scaling'.rope_type", "unsupported rotary scaling", "found yarn"});
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"type", "dynamic"}, {"factor", 2.0}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'rope_parameters'.type", "found dynamic"});
  j["rope_parameters"] = {{"rope_type", "linear"}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'rope_parameters'.factor", "missing"});
  j["rope_parameters"] = {{"rope_type", "default"}, {"partial_rotary_factor", 0.5}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'rope_parameters'.partial_rotary_factor", "found 0.5"});
  j["rope_parameters"] = {{"rope_type", "llama3"},
                          {"factor", 8.0},
                          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0},
                          {"rope_theta", 5e5}};
  EXPECT_NO_THROW(shape_of(j));
  j = small_qwen3();
  j["layer_types"] = {"full_attention", "sliding_attention", "full_attention"};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'use_sliding_window'", "expected true", "found false"});
  j["layer_types"] = {"full_attention", "chunked_attention", "full_attention"};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'layer_types'[1]", "found chunked_attention"});
  j["layer_types"] = {"full_attention"};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'layer_types'", "a list of 3 strings"});
  j = small_qwen3();
  j["use_sliding_window"] = true;
  j["sliding_window"] = 0;
  j["max_window_layers"] = 1;
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'sliding_window'", "must be positive"});
  j["sliding_window"] = 8;
  EXPECT_NO_THROW(shape_of(j));
}

// --- Phi-3 ---------------------------------------------------------------------------------------------------------

nlohmann::json small_phi3() {
  return {{"model_type", "phi3"},     {"hidden_size", 64},
          {"intermediate_size", 100}, {"num_hidden_layers", 2},
          {"num_attention_heads", 8}, {"num_key_value_heads", 2},
          {"vocab_size", 10},         {"max_position_embeddings", 64}};
}

TEST(Phi3Family, FusedProjectionsAreOneLayerEachWithOneSite) {
  const ModelShape s = shape_of(small_phi3());
  EXPECT_EQ(s.family->name(), "phi3");
  EXPECT_EQ(s.head_dim, 8);
  EXPECT_FALSE(s.tie_word_embeddings);
  EXPECT_EQ(describe_layers(linear_layers(s)), (std::vector<std::string>{
                                                   "self_attn.qkv_proj attn_in 96x64 nobias",  // 64 + 2 x 2 x 8
                                                   "self_attn.o_proj attn_out 64x64 nobias",
                                                   "mlp.gate_up_proj mlp_in 200x64 nobias",  // gate and up stacked
                                                   "mlp.down_proj mlp_hidden 64x100 nobias",
                                               }));
  EXPECT_EQ(describe_tensors(global_tensors(s)), (std::vector<std::string>{
                                                     "model.embed_tokens.weight 10x64 normal",
                                                     "model.norm.weight 64 ones",
                                                     "lm_head.weight 10x64 normal",
                                                 }));
  EXPECT_EQ(describe_tensors(block_tensors(s, 1)), (std::vector<std::string>{
                                                       "model.layers.1.self_attn.qkv_proj.weight 96x64 normal",
                                                       "model.layers.1.self_attn.o_proj.weight 64x64 normal",
                                                       "model.layers.1.mlp.gate_up_proj.weight 200x64 normal",
                                                       "model.layers.1.mlp.down_proj.weight 64x100 normal",
                                                       "model.layers.1.input_layernorm.weight 64 ones",
                                                       "model.layers.1.post_attention_layernorm.weight 64 ones",
                                                   }));
}

TEST(Phi3Family, LongRopeInEverySpellingAndItsRefusals) {
  nlohmann::json j = small_phi3();
  j["partial_rotary_factor"] = 0.5;  // 4 rotary dimensions of 8: 2 factors each
  for (const char* type : {"longrope", "su", "yarn"}) {
    j["rope_scaling"] = {{"type", type}, {"short_factor", {1.0, 2.0}}, {"long_factor", {3.0, 4.0}}};
    EXPECT_NO_THROW(shape_of(j)) << type;
  }
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput,
               {"/models/x/config.json: key 'rope_scaling'.type", "unsupported rotary scaling", "found dynamic"});
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'rope_scaling'.rope_type", "found linear"});
  j["rope_scaling"] = {{"rope_type", "longrope"}, {"short_factor", {1.0, 2.0, 3.0}}, {"long_factor", {3.0, 4.0}}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput,
               {"'rope_scaling'.short_factor", "expected 2 numbers", "found 3 numbers"});
  j["rope_scaling"] = {{"rope_type", "longrope"}, {"short_factor", {1.0, 2.0}}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'rope_scaling'.long_factor", "missing"});
  j["rope_scaling"] = {{"rope_type", "longrope"}, {"short_factor", {1.0, -2.0}}, {"long_factor", {3.0, 4.0}}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'rope_scaling'.short_factor", "positive", "found -2.0"});
  j.erase("rope_scaling");
  j["partial_rotary_factor"] = 0.3;  // int(8 x 0.3) = 2 rotary dimensions: fine
  EXPECT_NO_THROW(shape_of(j));
  j["partial_rotary_factor"] = 0.4;  // int(8 x 0.4) = 3: odd
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"partial_rotary_factor", "even", "found 3"});
  j = small_phi3();
  j["hidden_act"] = "gelu";
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'hidden_act'", "found gelu"});
  j = small_phi3();
  j["sliding_window"] = -1;
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'sliding_window'", "must be positive"});
}

// Every family: the tensors of the whole checkpoint are the global ones, then each block's in turn, each block's
// under its prefix; the linear layers' weights are among them.
TEST(Families, ExpectedTensorsAreGlobalsThenBlocksInOrder) {
  for (const nlohmann::json& config : {small_opt(), small_llama(), small_qwen3(), small_phi3()}) {
    const ModelShape s = shape_of(config);
    std::vector<std::string> joined = describe_tensors(global_tensors(s));
    for (int64_t b = 0; b < s.num_layers; ++b) {
      for (const std::string& t : describe_tensors(block_tensors(s, b))) {
        EXPECT_EQ(t.rfind(block_prefix(s, b), 0), 0u) << t;
        joined.push_back(t);
      }
      for (const LinearLayer& l : linear_layers(s)) {
        const std::string weight = block_prefix(s, b) + l.name + ".weight";
        EXPECT_EQ(std::count_if(joined.begin(), joined.end(),
                                [&](const std::string& t) { return t.rfind(weight + " ", 0) == 0; }),
                  1)
            << weight;
      }
    }
    EXPECT_EQ(describe_tensors(expected_tensors(s)), joined) << s.model_type;
  }
}

// --- hostile configs (found by the config fuzzer, tests/fuzz) ----------------------------------------------------

// Sizes are int64 in config.json, but heads x head_dim and every weight's element count must stay within int64:
// 8 x 2^63-1 overflowed (undefined behaviour) while building the layer list.
TEST(HostileInputs, ImplausiblyLargeSizesAreInputErrors) {
  for (const char* key : {"hidden_size", "head_dim", "max_position_embeddings", "vocab_size", "num_hidden_layers"}) {
    nlohmann::json j = small_llama();
    j[key] = int64_t{1} << 40;
    expect_error([&] { shape_of(j); }, ErrorKind::kInput,
                 {"/models/x/config.json", std::string("'") + key + "'", "implausibly large", "at most 2147483647"});
  }
  nlohmann::json j = small_llama();
  j["head_dim"] = 16;
  EXPECT_EQ(shape_of(j).head_dim, 16);  // an explicit head_dim other than hidden / heads stays allowed
}

// Optional sizes were taken as they came: a negative word_embed_proj_dim gave OPT tensors of negative shape.
TEST(HostileInputs, OptionalSizesMustBePositive) {
  nlohmann::json j = small_opt();
  j["word_embed_proj_dim"] = -8;
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'word_embed_proj_dim'", "must be positive", "-8"});
  j["word_embed_proj_dim"] = 8;
  EXPECT_EQ(global_tensors(shape_of(j))[0].shape, (std::vector<int64_t>{50, 8}));             // embed_tokens: 8 wide
  EXPECT_EQ(global_tensors(shape_of(small_opt()))[0].shape, (std::vector<int64_t>{50, 16}));  // hidden_size
  j = small_llama();
  j["num_key_value_heads"] = -4;
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'num_key_value_heads'", "must be positive"});
}

// original_max_position_embeddings is a JSON number converted to an integer: 1e300 was an undefined conversion.
TEST(HostileInputs, RopeOriginalPositionsMustBeAnIntegerInRange) {
  nlohmann::json j = small_llama();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"original_max_position_embeddings", 1e300}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput,
               {"'rope_scaling'.original_max_position_embeddings", "must be a positive integer"});
  j["rope_scaling"]["original_max_position_embeddings"] = 8192.5;
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"original_max_position_embeddings", "8192.5"});
  j["rope_scaling"]["original_max_position_embeddings"] = 4096;
  EXPECT_NO_THROW(shape_of(j));
}

}  // namespace
}  // namespace optima::test
