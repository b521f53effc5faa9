// Regression tests for malformed inputs the fuzz targets (tests/fuzz) found mishandled: each was a crash, an
// exception other than optima::Error, or a file accepted in a state the rest of optima could not use. Each test
// feeds the minimal input through the public entry point and expects a clear input error (or, where the input was
// valid, success). Those about config.json's architecture keys are with the model families, in test_families.cpp
// (the families need LibTorch).
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "optima/io/model_config.h"
#include "optima/io/safetensors.h"
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

// ByteLevel's add_prefix_space defaults to true; after a Split the error quoted the absent key of a const object,
// which read freed memory (found by fuzz_bpe_tokenizer_json).
TEST(HostileInputs, ByteLevelAfterSplitWithDefaultPrefixSpaceIsRefused) {
  TempDir dir;
  nlohmann::json j = tiny_tokenizer_json();
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"}, {"pattern", {{"String", "b"}}}, {"behavior", "Isolated"}},
                          {{"type", "ByteLevel"}, {"use_regex", false}}}}};
  write_text(dir / "tokenizer.json", j.dump());
  expect_error([&] { load_tokenizer(dir.path()); }, ErrorKind::kInput,
               {"tokenizer.json: pre_tokenizer.pretokenizers[1].add_prefix_space", "false after a Split", "true"});
}

// A vocabulary id near 2^31 made the decoder's id-indexed table allocate 64 GiB (found by fuzz_bpe_tokenizer_json).
TEST(HostileInputs, ImplausiblyLargeVocabularyIdIsAnInputError) {
  TempDir dir;
  nlohmann::json j = tiny_tokenizer_json();
  j["model"]["vocab"]["b"] = 2147483000;
  write_text(dir / "tokenizer.json", j.dump());
  expect_error([&] { load_tokenizer(dir.path()); }, ErrorKind::kInput,
               {"tokenizer.json: model.vocab.b", "implausibly large token id", "2147483000"});
}

// A "type" that is not a string, or an added token's flag that is not a boolean, threw nlohmann's type_error past the
// loaders' input errors (found by fuzz_bpe_tokenizer_json).
TEST(HostileInputs, TokenizerFieldsOfTheWrongJsonTypeAreInputErrors) {
  TempDir dir;
  nlohmann::json j = tiny_tokenizer_json();
  j["decoder"] = {{"type", 5}};
  write_text(dir / "tokenizer.json", j.dump());
  expect_error([&] { load_tokenizer(dir.path()); }, ErrorKind::kInput,
               {"tokenizer.json: decoder", "unsupported tokenizer feature"});
  j.erase("decoder");
  j["pre_tokenizer"] = {{"type", nlohmann::json::array()}};
  write_text(dir / "tokenizer.json", j.dump());
  expect_error([&] { load_tokenizer(dir.path()); }, ErrorKind::kInput, {"tokenizer.json: pre_tokenizer"});
  j = tiny_tokenizer_json();
  write_text(dir / "tokenizer.json", j.dump());
  write_text(dir / "tokenizer_config.json", R"({"added_tokens_decoder": {"4": {"content": "<s>", "special": "yes"}}})");
  expect_error([&] { load_tokenizer(dir.path()); }, ErrorKind::kInput,
               {"tokenizer_config.json: added_tokens_decoder.4: special", "true or false"});
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
