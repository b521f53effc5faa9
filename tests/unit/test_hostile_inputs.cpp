// Regression tests for malformed inputs the fuzz targets (tests/fuzz) found mishandled: each was a crash, an
// exception other than optima::Error, or a file accepted in a state the rest of optima could not use. Each test
// feeds the minimal input through the public entry point and expects a clear input error (or, where the input was
// valid, success).
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "optima/io/model_config.h"
#include "optima/io/safetensors.h"
#include "optima/model/arch.h"
#include "optima/text/tokenizer.h"
#include "test_util.h"

namespace optima::test {
namespace {

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A byte-level BPE tokenizer.json over the letters a, b and space (GPT-2's alphabet spells space as U+0120).
nlohmann::json tiny_tokenizer_json() {
  return {
      {"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"\xc4\xa0", 2}, {"ab", 3}}}, {"merges", {"a b"}}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"added_tokens", {{{"id", 4}, {"content", "<s>"}, {"special", true}}}}};
}

// A JSON number too large for a double is an out_of_range exception in nlohmann::json, not a parse_error.
TEST(HostileInputs, HugeJsonNumberInConfigIsAnInputError) {
  expect_error([] { ModelConfig::parse(R"({"model_type": "llama", "hidden_size": 1e400})", "/m/config.json"); },
               ErrorKind::kInput, {"/m/config.json", "malformed JSON"});
  TempDir dir;
  write_text(dir / "config.json", R"({"num_hidden_layers": -1e999})");
  expect_error([&] { ModelConfig::load(dir.path()); }, ErrorKind::kInput, {"config.json", "malformed JSON"});
}

TEST(HostileInputs, HugeJsonNumberInSafetensorsHeaderIsAnInputError) {
  const std::string header = R"({"w": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}})";
  std::string file(8, '\0');
  for (size_t i = 0; i < 8; ++i) file[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  file += header + std::string(4, '\0');
  expect_error(
      [&] { parse_safetensors_header(reinterpret_cast<const std::byte*>(file.data()), file.size(), "x.safetensors"); },
      ErrorKind::kInput, {"x.safetensors", "not valid JSON"});
}

// A zero dimension made the element count 0, so [0, 2^62, 2^62] passed although its strides overflow int64.
TEST(HostileInputs, SafetensorsShapeWithAZeroMustStillHaveStridesInRange) {
  auto file_with_shape = [](const std::string& shape) {
    const std::string header = R"({"w": {"dtype": "F32", "shape": )" + shape + R"(, "data_offsets": [0, 0]}})";
    std::string file(8, '\0');
    for (size_t i = 0; i < 8; ++i) file[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    return file + header;
  };
  auto parse = [](const std::string& file) {
    return parse_safetensors_header(reinterpret_cast<const std::byte*>(file.data()), file.size(), "x.safetensors");
  };
  const std::string bad = file_with_shape("[0, 4611686018427387904, 4611686018427387904]");
  expect_error([&] { parse(bad); }, ErrorKind::kInput, {"x.safetensors: tensor 'w'", "shape is too large"});
  const std::string good = file_with_shape("[0, 4611686018427387904]");
  EXPECT_EQ(parse(good).tensors.at(0).shape, (std::vector<int64_t>{0, int64_t{1} << 62}));
}

TEST(HostileInputs, HugeJsonNumberInTokenizerJsonIsAnInputError) {
  TempDir dir;
  nlohmann::json j = tiny_tokenizer_json();
  std::string text = j.dump();
  text.replace(text.find("\"a\":0"), 5, "\"a\":1e400");
  write_text(dir / "tokenizer.json", text);
  expect_error([&] { load_tokenizer(dir.path()); }, ErrorKind::kInput, {"tokenizer.json", "malformed JSON"});
}

nlohmann::json llama_config() {
  return {{"model_type", "llama"},    {"hidden_size", 64}, {"intermediate_size", 100},     {"num_hidden_layers", 2},
          {"num_attention_heads", 8}, {"vocab_size", 10},  {"max_position_embeddings", 32}};
}

ModelShape shape_of(const nlohmann::json& json) {
  return read_model_shape(ModelConfig(json, "/m/config.json"));
}

// Sizes are int64 in config.json, but heads x head_dim and every weight's element count must stay within int64:
// 8 x 2^63-1 overflowed (undefined behaviour) while building the layer list.
TEST(HostileInputs, ImplausiblyLargeSizesAreInputErrors) {
  for (const char* key : {"hidden_size", "head_dim", "max_position_embeddings", "vocab_size", "num_hidden_layers"}) {
    nlohmann::json j = llama_config();
    j[key] = int64_t{1} << 40;
    expect_error([&] { shape_of(j); }, ErrorKind::kInput,
                 {"/m/config.json", std::string("'") + key + "'", "implausibly large", "at most 2147483647"});
  }
  nlohmann::json j = llama_config();
  j["head_dim"] = 16;
  EXPECT_EQ(shape_of(j).head_dim, 16);  // an explicit head_dim other than hidden / heads stays allowed
}

// Optional sizes were taken as they came: a negative word_embed_proj_dim gave OPT tensors of negative shape.
TEST(HostileInputs, OptionalSizesMustBePositive) {
  const nlohmann::json opt = {{"model_type", "opt"},          {"hidden_size", 16}, {"num_hidden_layers", 1},
                              {"num_attention_heads", 2},     {"ffn_dim", 32},     {"vocab_size", 50},
                              {"max_position_embeddings", 64}};
  nlohmann::json j = opt;
  j["word_embed_proj_dim"] = -8;
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'word_embed_proj_dim'", "must be positive", "-8"});
  j["word_embed_proj_dim"] = 8;
  EXPECT_EQ(shape_of(j).word_embed_proj_dim, 8);
  EXPECT_EQ(shape_of(opt).word_embed_proj_dim, 16);
  j = llama_config();
  j["num_key_value_heads"] = -4;
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"'num_key_value_heads'", "must be positive"});
}

// original_max_position_embeddings is a JSON number converted to an integer: 1e300 was an undefined conversion.
TEST(HostileInputs, RopeOriginalPositionsMustBeAnIntegerInRange) {
  nlohmann::json j = llama_config();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"original_max_position_embeddings", 1e300}};
  expect_error([&] { shape_of(j); }, ErrorKind::kInput,
               {"'rope_scaling'.original_max_position_embeddings", "must be a positive integer"});
  j["rope_scaling"]["original_max_position_embeddings"] = 8192.5;
  expect_error([&] { shape_of(j); }, ErrorKind::kInput, {"original_max_position_embeddings", "8192.5"});
  j["rope_scaling"]["original_max_position_embeddings"] = 4096;
  EXPECT_EQ(shape_of(j).rope_original_max_positions, 4096);
}

// PCRE2 refuses PCRE2_UCP together with PCRE2_LITERAL, so every Split with a {"String": ...} pattern failed to load.
TEST(HostileInputs, SplitOnALiteralStringLoadsAndSplits) {
  TempDir dir;
  nlohmann::json j = tiny_tokenizer_json();
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"}, {"pattern", {{"String", "b"}}}, {"behavior", "Isolated"}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  write_text(dir / "tokenizer.json", j.dump());
  const auto tok = load_tokenizer(dir.path());
  EXPECT_EQ(tok->encode("ab", false), (std::vector<int64_t>{0, 1}));  // "b" is split off, so "ab" never merges
  EXPECT_EQ(tok->encode("a b", false), (std::vector<int64_t>{0, 2, 1}));
}

// A TemplateProcessing id that is neither in the vocabulary nor an added token was emitted by encode(), beyond
// vocab_size() and undecodable.
TEST(HostileInputs, TemplateTokenIdMustBeDefined) {
  TempDir dir;
  nlohmann::json j = tiny_tokenizer_json();
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", {{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {{"id", "A"}}}}}},
                         {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {99}}}}}}};
  write_text(dir / "tokenizer.json", j.dump());
  expect_error([&] { load_tokenizer(dir.path()); }, ErrorKind::kInput,
               {"tokenizer.json: post_processor.special_tokens.<s>.ids", "not defined", "99"});
  j["post_processor"]["special_tokens"]["<s>"]["ids"] = {4};
  write_text(dir / "tokenizer.json", j.dump());
  EXPECT_EQ(load_tokenizer(dir.path())->encode("ab"), (std::vector<int64_t>{4, 3}));
}

}  // namespace
}  // namespace optima::test
