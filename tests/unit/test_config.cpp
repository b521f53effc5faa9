// config.json access and input-site names (no LibTorch: part of optima_base_tests; the families that turn a
// config into an architecture are tested in test_families.cpp).
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "optima/io/model_config.h"
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
