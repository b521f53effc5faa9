// Pieces shared by the tokenizer implementations (private to src/text): the settings read from
// tokenizer_config.json / special_tokens_map.json, JSON and file helpers, added-token splitting and the factories
// that load_tokenizer() dispatches to.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "optima/text/tokenizer.h"

namespace optima::text_detail {

// A token matched verbatim in the raw text before any pre-tokenization (HF "added tokens").
struct AddedToken {
  std::string content;
  int64_t id = -1;
  bool special = true;  // skipped by decode()
  bool lstrip = false;  // also swallows whitespace on its left
  bool rstrip = false;  // also swallows whitespace on its right
};

// What tokenizer_config.json and special_tokens_map.json say; every field is optional so each implementation can
// apply the defaults transformers uses for that kind of tokenizer.
struct TokenizerConfig {
  std::filesystem::path dir;
  std::optional<std::string> bos_token, eos_token, unk_token, pad_token;
  std::vector<std::string> additional_special_tokens;
  std::optional<bool> add_bos_token, add_eos_token, legacy, add_prefix_space;
  std::vector<AddedToken> added_tokens;  // from added_tokens_decoder
};

// Reads `dir`/tokenizer_config.json and `dir`/special_tokens_map.json when present.
TokenizerConfig read_tokenizer_config(const std::filesystem::path& dir);
// The same for files already parsed (the paths name them in errors); what read_tokenizer_config applies, in order.
void apply_tokenizer_config(const nlohmann::json& j, const std::filesystem::path& config_path, TokenizerConfig& c);
void apply_special_tokens_map(const nlohmann::json& j, const std::filesystem::path& map_path, TokenizerConfig& c);

// Reads a whole file; fail_input naming the file when it cannot be opened.
std::string read_file(const std::filesystem::path& path);
// Parses a JSON file; fail_input naming the file (and the parser's position) when malformed.
nlohmann::json read_json(const std::filesystem::path& path);

// One piece of the text after splitting out added tokens: either plain text or one added token.
struct Segment {
  std::string_view text;  // plain text (empty for an added token)
  size_t offset = 0;      // byte offset of `text` in the input
  int64_t token_id = -1;  // >= 0 for an added token
};

// Leftmost-longest matching of added tokens, as the `tokenizers` library does before normalization.
class AddedTokenSplitter {
 public:
  void add(const AddedToken& token);
  bool empty() const { return tokens_.empty(); }
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  const AddedToken* find_id(int64_t id) const;
  // Appends the segments of `text` to `out`; plain segments are never empty.
  void split(std::string_view text, std::vector<Segment>& out) const;

 private:
  std::vector<AddedToken> tokens_;
  bool first_byte_[256] = {};
};

// BPE merge table: (left id, right id) -> (rank, merged id); a lower rank merges first.
using MergeTable = std::unordered_map<uint64_t, std::pair<int32_t, int32_t>>;
inline uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}
// Merges the symbols of one word by rank, lowest rank first and leftmost among equal ranks, as `tokenizers`'
// BPE::merge_word does; O(n log n) so that long words (a whole SentencePiece segment) stay fast.
std::vector<int32_t> bpe_merge(const std::vector<int32_t>& symbols, const MergeTable& merges);

// Factories. `where` strings in errors name the files these are read from.
// `j` is the parsed tokenizer.json at `file`.
std::unique_ptr<Tokenizer> make_bpe_from_tokenizer_json(const std::filesystem::path& file, const nlohmann::json& j,
                                                        const TokenizerConfig& config);
std::unique_ptr<Tokenizer> make_bpe_from_vocab_merges(const std::filesystem::path& vocab_path,
                                                      const std::filesystem::path& merges_path,
                                                      const TokenizerConfig& config);
std::unique_ptr<Tokenizer> make_sentencepiece(const std::filesystem::path& model_path, const TokenizerConfig& config);

// True when a parsed tokenizer.json uses a byte-level pre-tokenizer (the kind make_bpe_from_tokenizer_json reads).
bool is_byte_level_tokenizer_json(const nlohmann::json& j);

}  // namespace optima::text_detail
