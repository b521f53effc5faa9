// The Gemma families (gemma2, gemma3_text) against transformers: each block's output and each input site's Hessian
// on the golden models of tests/data/models (scripts/make_model_goldens.py; logits and perplexity are checked with
// the other families in test_model.cpp), the older config.json spellings, the layout and the refusals.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "optima/io/checkpoint.h"
#include "optima/io/json_file.h"
#include "optima/io/model_config.h"
#include "optima/io/safetensors.h"
#include "optima/io/tensor.h"
#include "optima/model/arch.h"
#include "optima/model/decoder.h"
#include "optima/model/family.h"
#include "optima/model/random_model.h"
#include "optima/stats/accumulator.h"
#include "test_util.h"

namespace optima::test {
namespace {

const char* kGemmaGoldens[] = {"gemma2", "gemma3-text", "gemma3-text-untied"};

std::map<std::string, at::Tensor> read_golden(const fs::path& dir) {
  const auto file = SafetensorsFile::open(dir / "golden.safetensors");
  std::map<std::string, at::Tensor> out;
  for (const TensorInfo& t : file->tensors())
    out[t.name] = tensor_from_bytes(t, file->data(t), file->mapping()).clone();
  return out;
}

double max_abs(const at::Tensor& t) {
  return t.abs().max().item<double>();
}

class GemmaGolden : public ::testing::TestWithParam<const char*> {};

// The hidden states entering and leaving each block within 1e-4 (absolute, on activations of order 1-10), and the
// Hessian H = (2/n) sum X^T X of each input site accumulated from optima's activations within 1e-5 of the largest
// entry of transformers' (float64 sums of transformers' fp32 activations).
TEST_P(GemmaGolden, BlockOutputsAndSiteHessiansMatchTransformers) {
  const fs::path dir = test_data_dir() / "models" / GetParam();
  const Checkpoint checkpoint = Checkpoint::open(dir);
  const DecoderModel model(checkpoint);
  auto golden = read_golden(dir);
  const at::Tensor& hidden = golden.at("hidden");
  ASSERT_EQ(hidden.size(0), model.shape().num_layers + 1);
  at::Tensor h = model.embed(golden.at("ids"));
  double worst_hidden = max_abs(h - hidden[0]), worst_hessian = 0;
  EXPECT_LE(worst_hidden, 1e-4) << "embedding";
  for (int64_t b = 0; b < model.shape().num_layers; ++b) {
    std::map<InputSite, InputStatistics> stats;
    const at::Tensor out = model.block_forward(model.load_block(b), h, [&](InputSite site, const at::Tensor& x) {
      auto it = stats.try_emplace(site, x.size(-1), x.device(), /*hessian=*/true, /*column_norms=*/false).first;
      it->second.add(x);
    });
    const double diff = max_abs(out - hidden[b + 1]);
    EXPECT_LE(diff, 1e-4) << "block " << b << " output";
    worst_hidden = std::max(worst_hidden, diff);
    ASSERT_EQ(stats.size(), 4u);
    for (const auto& entry : stats) {
      const std::string key = fmt::format("hessian.{}.{}", b, to_string(entry.first));
      const at::Tensor& want = golden.at(key);
      const double relative = max_abs(entry.second.hessian() - want) / max_abs(want);
      EXPECT_LE(relative, 1e-5) << key;
      worst_hessian = std::max(worst_hessian, relative);
    }
    h = out;
  }
  const double logits = max_abs(model.logits(h) - golden.at("logits"));
  EXPECT_LE(logits, 1e-4);
  std::cout << GetParam() << ": max |hidden diff| " << worst_hidden << ", max Hessian diff (relative) " << worst_hessian
            << ", max |logit diff| " << logits << "\n";
}

INSTANTIATE_TEST_SUITE_P(Gemma, GemmaGolden, ::testing::ValuesIn(kGemmaGoldens), [](const auto& param_info) {
  std::string name = param_info.param;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
});

// A copy of a golden model whose config.json is `edit`ed; the weights are linked, not copied.
fs::path with_config(const TempDir& tmp, const char* golden, const std::function<void(nlohmann::json&)>& edit) {
  const fs::path from = test_data_dir() / "models" / golden;
  nlohmann::json config = read_json_file(from / "config.json");
  edit(config);
  std::ofstream(tmp / "config.json") << config.dump(2);
  fs::copy_file(from / "model.safetensors", tmp / "model.safetensors");
  return tmp.path();
}

at::Tensor golden_logits_of(const fs::path& dir, const at::Tensor& ids) {
  const Checkpoint checkpoint = Checkpoint::open(dir);
  return DecoderModel(checkpoint).forward(ids);
}

// Published Gemma 3 configs predate rope_parameters and layer_types: rope_theta (full layers), rope_local_base_freq
// (sliding layers), rope_scaling (full layers) and sliding_window_pattern say the same, and give the same logits.
TEST(GemmaConfig, OlderGemma3SpellingsGiveTheSameModel) {
  auto golden = read_golden(test_data_dir() / "models" / "gemma3-text");
  TempDir tmp;
  const fs::path dir = with_config(tmp, "gemma3-text", [](nlohmann::json& c) {
    const nlohmann::json rope = c["rope_parameters"];
    c.erase("rope_parameters");
    c.erase("layer_types");
    c["rope_theta"] = rope["full_attention"]["rope_theta"];
    c["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"];
    c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rope["full_attention"]["factor"]}};
    c["sliding_window_pattern"] = 2;
  });
  EXPECT_LE(max_abs(golden_logits_of(dir, golden["ids"]) - golden["logits"]), 1e-4);
  // The test can fail: without the scaling of the full layers the logits move.
  TempDir tmp2;
  const fs::path unscaled = with_config(tmp2, "gemma3-text", [](nlohmann::json& c) {
    c["rope_parameters"]["full_attention"] = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
  });
  EXPECT_GT(max_abs(golden_logits_of(unscaled, golden["ids"]) - golden["logits"]), 1e-2);
}

TEST(GemmaConfig, OlderGemma2SpellingsGiveTheSameModel) {
  auto golden = read_golden(test_data_dir() / "models" / "gemma2");
  TempDir tmp;
  const fs::path dir = with_config(tmp, "gemma2", [](nlohmann::json& c) {
    c["rope_theta"] = c["rope_parameters"]["rope_theta"];
    c.erase("rope_parameters");
    c.erase("layer_types");  // alternating, from a sliding layer 0
    c["rope_scaling"] = nullptr;
  });
  EXPECT_LE(max_abs(golden_logits_of(dir, golden["ids"]) - golden["logits"]), 1e-4);
  TempDir tmp2;  // the opposite pattern is another model
  const fs::path swapped = with_config(tmp2, "gemma2", [](nlohmann::json& c) {
    c["layer_types"] = {"full_attention", "sliding_attention", "full_attention"};
  });
  EXPECT_GT(max_abs(golden_logits_of(swapped, golden["ids"]) - golden["logits"]), 1e-2);
}

nlohmann::json small_gemma(const char* model_type) {
  return {{"model_type", model_type},      {"hidden_size", 32},  {"num_hidden_layers", 2},  {"num_attention_heads", 4},
          {"num_key_value_heads", 2},      {"head_dim", 16},     {"intermediate_size", 48}, {"vocab_size", 96},
          {"max_position_embeddings", 64}, {"sliding_window", 8}};
}

ModelShape shape_of(const nlohmann::json& json) {
  return read_model_shape(ModelConfig(json, "/models/g/config.json"));
}

std::vector<std::string> names(const std::vector<ExpectedTensor>& tensors) {
  std::vector<std::string> out;
  for (const ExpectedTensor& t : tensors) out.push_back(fmt::format("{} {}", t.name, fmt::join(t.shape, "x")));
  return out;
}

TEST(GemmaFamily, LayersSitesAndTensors) {
  const ModelShape s = shape_of(small_gemma("gemma3_text"));
  EXPECT_EQ(s.family->name(), "gemma3_text");
  EXPECT_TRUE(s.tie_word_embeddings);  // Gemma's default
  std::vector<std::string> layers;
  for (const LinearLayer& l : linear_layers(s))
    layers.push_back(fmt::format("{} {} {}x{}", l.name, to_string(l.input), l.out_features, l.in_features));
  EXPECT_EQ(layers, (std::vector<std::string>{"self_attn.q_proj attn_in 64x32", "self_attn.k_proj attn_in 32x32",
                                              "self_attn.v_proj attn_in 32x32", "self_attn.o_proj attn_out 32x64",
                                              "mlp.gate_proj mlp_in 48x32", "mlp.up_proj mlp_in 48x32",
                                              "mlp.down_proj mlp_hidden 32x48"}));
  EXPECT_EQ(names(global_tensors(s)),
            (std::vector<std::string>{"model.embed_tokens.weight 96x32", "model.norm.weight 32"}));
  const std::vector<std::string> block = names(block_tensors(s, 1));
  EXPECT_EQ(
      std::vector<std::string>(block.begin() + 7, block.end()),
      (std::vector<std::string>{
          "model.layers.1.input_layernorm.weight 32", "model.layers.1.post_attention_layernorm.weight 32",
          "model.layers.1.pre_feedforward_layernorm.weight 32", "model.layers.1.post_feedforward_layernorm.weight 32",
          "model.layers.1.self_attn.q_norm.weight 16", "model.layers.1.self_attn.k_norm.weight 16"}));
  nlohmann::json j = small_gemma("gemma2");
  j["tie_word_embeddings"] = false;
  const ModelShape g2 = shape_of(j);
  EXPECT_EQ(names(block_tensors(g2, 0)).size(), 11u);  // no q/k norms
  EXPECT_EQ(names(global_tensors(g2)).back(), "lm_head.weight 96x32");
}

// A multimodal Gemma 3 config as transformers writes it: the text model's keys in text_config (whose final
// soft-capping Gemma3ForConditionalGeneration does not apply), a vision tower's in vision_config.
nlohmann::json multimodal_gemma3() {
  nlohmann::json text = small_gemma("gemma3_text");
  text["final_logit_softcapping"] = 30.0;
  return {{"model_type", "gemma3"},
          {"text_config", text},
          {"vision_config", {{"model_type", "siglip_vision_model"}, {"hidden_size", 16}}},
          {"mm_tokens_per_image", 4}};
}

TEST(GemmaFamily, MultimodalGemma3IsItsTextModelUnderTheLanguageModelPrefix) {
  nlohmann::json j = multimodal_gemma3();
  const ModelShape s = shape_of(j);
  EXPECT_EQ(s.family->name(), "gemma3");
  EXPECT_EQ(s.hidden_size, 32);
  EXPECT_EQ(s.num_kv_heads, 2);
  EXPECT_TRUE(s.copy_other_tensors);  // the vision tower and projector go to the output unchanged
  EXPECT_FALSE(shape_of(small_gemma("gemma3_text")).copy_other_tensors);
  EXPECT_TRUE(s.tie_word_embeddings);
  EXPECT_EQ(block_prefix(s, 1), "language_model.model.layers.1.");
  EXPECT_EQ(names(global_tensors(s)), (std::vector<std::string>{"language_model.model.embed_tokens.weight 96x32",
                                                                "language_model.model.norm.weight 32"}));
  EXPECT_EQ(names(block_tensors(s, 0)).front(), "language_model.model.layers.0.self_attn.q_proj.weight 64x32");
  EXPECT_EQ(names(block_tensors(s, 0)).size(), 13u);
  // The head is tied or not as the top level says, and an untied one is the language model's.
  j["tie_word_embeddings"] = false;
  j["text_config"]["tie_word_embeddings"] = true;
  EXPECT_EQ(names(global_tensors(shape_of(j))).back(), "language_model.lm_head.weight 96x32");
}

// make-random knows only the family's tensors, so it refuses a model that has others rather than write it partly.
TEST(GemmaFamily, MakeRandomRefusesAMultimodalModel) {
  TempDir tmp;
  const fs::path out = tmp / "random";
  expect_error([&] { write_random_model(multimodal_gemma3(), out, RandomModelOptions{}); }, ErrorKind::kInput,
               {"key 'model_type'", "make-random writes only text models", "found gemma3"});
  EXPECT_FALSE(fs::exists(out));
  write_random_model(small_gemma("gemma3_text"), out, RandomModelOptions{});  // the text model alone is made
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
}

TEST(GemmaFamily, RefusesWhatItCannotComputeNamingKeyAndValue) {
  nlohmann::json j = small_gemma("gemma3_text");
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "yarn"}, {"factor", 8.0}}},
                          {"sliding_attention", {{"rope_type", "default"}}}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput,
               {"'rope_parameters'.full_attention.rope_type", "unsupported rotary scaling", "found yarn"});
  j = small_gemma("gemma3_text");
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'rope_scaling'.rope_type", "found dynamic"});
  j = small_gemma("gemma2");
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 10000.0}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'rope_parameters'.rope_type", "found llama3"});
  j = small_gemma("gemma3");  // multimodal, but its text model's keys at the top level
  j["vision_config"] = {{"model_type", "siglip_vision_model"}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'text_config'", "text model's config", "found no such key"});
  j = multimodal_gemma3();
  j["text_config"]["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput,
               {"config.json text_config: key 'rope_scaling'.rope_type", "found dynamic"});
  j = small_gemma("gemma2");
  j["hidden_activation"] = "gelu_new";
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'hidden_activation'", "found gelu_new"});
  j = small_gemma("gemma3_text");
  j["use_bidirectional_attention"] = true;
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'use_bidirectional_attention'", "found true"});
  j = small_gemma("gemma3_text");
  j["layer_types"] = {"sliding_attention", "chunked_attention"};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'layer_types'", "found chunked_attention"});
  j["layer_types"] = {"sliding_attention"};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'layer_types'", "one type per layer"});
  j = small_gemma("gemma2");
  j["sliding_window"] = nullptr;
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'sliding_window'", "found null"});
  j = small_gemma("gemma2");
  j["rope_parameters"] = {{"rope_type", "default"}, {"partial_rotary_factor", 0.5}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"partial_rotary_factor", "found 0.5"});
}

}  // namespace
}  // namespace optima::test
