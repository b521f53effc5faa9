// The byte-level BPE tokenizer (private to src/text). bpe_tokenizer.cpp implements encoding and decoding;
// bpe_tokenizer_load.cpp fills the members from tokenizer.json or vocab.json + merges.txt, which is why they are
// public: the loaders are the only code that sees this class, everything else goes through optima::Tokenizer.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "byte_level_pretokenizer.h"
#include "optima/text/tokenizer.h"
#include "tokenizer_internal.h"

namespace optima::text_detail {

class ByteLevelBpe final : public Tokenizer {
 public:
  // Where the tokenizer came from, for describe() and error messages.
  std::string source_;
  std::string where_;

  std::unordered_map<std::string, int32_t> vocab_;  // piece (byte-to-unicode alphabet) -> id
  std::vector<std::string> pieces_;                 // id -> piece ("" for ids not in the vocabulary)
  std::vector<std::string> piece_bytes_;            // id -> the raw bytes the piece stands for
  MergeTable merges_;
  std::array<int32_t, 256> byte_ids_{};  // id of the single-byte piece, -1 if the vocabulary lacks it
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  bool add_prefix_space_ = false;
  std::vector<std::unique_ptr<Regex>> splits_;  // applied in order to each plain segment

  AddedTokenSplitter added_;
  std::vector<int64_t> prefix_, suffix_;  // template tokens around the text when add_special is true
  std::optional<int64_t> bos_, eos_;

  // Per-pre-token cache of merge results; text repeats words constantly, so this is most of the speed.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
  static constexpr size_t kCacheLimit = 1 << 20;
  static constexpr size_t kCacheMaxKey = 256;

  // Loading: sets the vocabulary (and the per-id bytes and single-byte ids derived from it), then adds merges in
  // rank order; `where` names the merge in errors.
  void set_vocab(std::unordered_map<std::string, int32_t> vocab);
  int32_t id_of(const std::string& piece, const std::string& where) const;
  void add_merge(const std::string& a, const std::string& b, int32_t rank, const std::string& where);

  // Whether decode() and piece() accept `id`: a vocabulary entry or an added token.
  bool known_id(int64_t id) const;
  // The id of `token`, an added token or a vocabulary entry.
  std::optional<int64_t> lookup(const std::string& token) const;

  // Merges the bytes of one pre-token into ids.
  void bpe_word(std::string_view word, std::vector<int64_t>& out) const;
  void push_byte(unsigned char b, std::vector<int64_t>& out) const;
  std::vector<int32_t> merge(std::string_view word) const;
  // Applies splits_[level..] to `piece` and merges the resulting pre-tokens.
  void pretokenize(std::string_view piece, size_t level, std::vector<int64_t>& out) const;

  std::vector<int64_t> encode(std::string_view text, bool add_special) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  std::string piece(int64_t id) const override;
  int64_t vocab_size() const override;
  std::optional<int64_t> bos_id() const override { return bos_; }
  std::optional<int64_t> eos_id() const override { return eos_; }
  std::string describe() const override;
};

}  // namespace optima::text_detail
