// config.json access, architecture parsing per family and input-site names (no LibTorch: part of
// optima_base_tests).
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "optima/io/model_config.h"
#include "optima/model/arch.h"
#include "optima/model/input_site.h"
#include "test_util.h"

namespace optima::test {
namespace {

ModelConfig config_of(const nlohmann::json& json) {
  return ModelConfig(json, "/models/x/config.json");
}

TEST(ModelConfig, RequireNamesKeyAndFile) {
  const ModelConfig c = config_of({{"hidden_size", "768"}, {"n", 3}, {"nothing", nullptr}});
  expect_error([&] { c.require<int64_t>("hidden_size"); }, ErrorKind::kInput,
               {"/models/x/config.json", "'hidden_size'", "expected an integer", "found string \"768\""});
  expect_error([&] { c.require<int64_t>("vocab_size"); }, ErrorKind::kInput, {"'vocab_size'", "missing"});
  expect_error([&] { c.require<int64_t>("nothing"); }, ErrorKind::kInput, {"'nothing'", "missing"});
  EXPECT_EQ(c.require<int64_t>("n"), 3);
  EXPECT_EQ(c.value_or<int64_t>("absent", 7), 7);
  EXPECT_DOUBLE_EQ(c.require<double>("n"), 3.0);  // integers are numbers too
  EXPECT_FALSE(c.optional<double>("nothing").has_value());
}

TEST(ModelShape, Opt125mFromThePublishedConfig) {
  const fs::path path = assets_dir() / "configs" / "opt-125m" / "config.json";
  OPTIMA_REQUIRE_ASSET(path);
  const ModelShape s = read_model_shape(ModelConfig::load(path));
  EXPECT_EQ(s.family, Family::kOpt);
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

TEST(ModelShape, LlamaFamilyVariants) {
  nlohmann::json base = {{"model_type", "llama"},    {"hidden_size", 64},
                         {"intermediate_size", 100}, {"num_hidden_layers", 2},
                         {"num_attention_heads", 8}, {"num_key_value_heads", 2},
                         {"vocab_size", 10},         {"max_position_embeddings", 32}};
  ModelShape s = read_model_shape(config_of(base));
  EXPECT_EQ(s.head_dim, 8);
  EXPECT_EQ(linear_layers(s)[1].out_features, 16);  // k_proj: 2 kv heads x 8
  EXPECT_FALSE(linear_layers(s)[0].bias);
  base["model_type"] = "qwen2";
  s = read_model_shape(config_of(base));
  EXPECT_TRUE(linear_layers(s)[0].bias);   // Qwen2 has q/k/v biases
  EXPECT_FALSE(linear_layers(s)[3].bias);  // but none on o_proj
  base["num_key_value_heads"] = 3;
  expect_error([&] { read_model_shape(config_of(base)); }, ErrorKind::kInput,
               {"'num_key_value_heads'", "divide", "found 3"});
  base["model_type"] = "gpt_neox";
  expect_error([&] { read_model_shape(config_of(base)); }, ErrorKind::kInput,
               {"'model_type'", "unsupported", "opt, llama", "gpt_neox"});
}

TEST(InputSite, NamesRoundTrip) {
  const std::vector<std::pair<InputSite, std::string>> names = {{InputSite::kAttentionInput, "attn_in"},
                                                                {InputSite::kAttentionOutput, "attn_out"},
                                                                {InputSite::kMlpInput, "mlp_in"},
                                                                {InputSite::kMlpHidden, "mlp_hidden"}};
  ASSERT_EQ(names.size(), kAllInputSites.size());
  for (const auto& [site, name] : names) {
    EXPECT_EQ(to_string(site), name);
    EXPECT_EQ(parse_input_site(name), site) << name;
  }
  for (InputSite site : kAllInputSites) EXPECT_EQ(parse_input_site(to_string(site)), site);
  EXPECT_EQ(parse_input_site("attn"), std::nullopt);
  EXPECT_EQ(parse_input_site("ATTN_IN"), std::nullopt);
  EXPECT_EQ(parse_input_site(""), std::nullopt);
}

}  // namespace
}  // namespace optima::test
