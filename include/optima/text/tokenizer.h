// Text tokenizers for the models optima prunes and evaluates: byte-level BPE (GPT-2, OPT, LLaMA-3-style
// tokenizer.json) and SentencePiece (LLaMA-1/2 family). Ids match Hugging Face transformers 5.x on the same files,
// which the golden tests in tests/unit/test_tokenizer.cpp check.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace optima {

// A loaded tokenizer. Implementations are immutable after loading; encode/decode may be called from several threads.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids for `text` (UTF-8). Ill-formed UTF-8 is first replaced as sanitize_utf8() does. When add_special is
  // true, the template tokens of the model are added (OPT prepends </s>=2, LLaMA-2 prepends <s>=1, GPT-2 adds
  // nothing), as tokenizer_config.json / the tokenizer.json post-processor say.
  virtual std::vector<int64_t> encode(std::string_view text, bool add_special = true) const = 0;

  // Text for `ids`, skipping special tokens (BOS, EOS, pad, unk and other added tokens marked special), like
  // transformers' decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False). Byte sequences that are
  // not valid UTF-8 come out as U+FFFD. Throws optima::Error (kInput) for an id outside [0, vocab_size()).
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;

  // The vocabulary string of one id (for byte-level BPE in the GPT-2 byte-to-unicode alphabet, e.g. "Ġthe").
  virtual std::string piece(int64_t id) const = 0;

  // One more than the largest id the tokenizer can produce (the number of embedding rows it needs at least).
  virtual int64_t vocab_size() const = 0;

  virtual std::optional<int64_t> bos_id() const = 0;
  virtual std::optional<int64_t> eos_id() const = 0;

  // One line for logs, e.g. "byte-level BPE (vocab.json + merges.txt, 50265 tokens)".
  virtual std::string describe() const = 0;
};

// Loads the tokenizer of a Hugging Face model directory. Picks the implementation from the files present:
//   tokenizer.json with a byte-level pre-tokenizer         -> byte-level BPE
//   (tokenizer.json of another kind and tokenizer.model    -> SentencePiece, e.g. Llama-2 repositories)
//   vocab.json + merges.txt                                -> byte-level BPE (GPT-2 / OPT layout)
//   tokenizer.model                                        -> SentencePiece
// and reads tokenizer_config.json (add_bos_token, add_eos_token, bos/eos/unk/pad tokens as strings or
// {"content": ...} objects, legacy, add_prefix_space, added_tokens_decoder) and special_tokens_map.json if present.
// Throws optima::Error (kInput) naming the file, and the key inside it, when files are missing, malformed or use
// tokenizer features optima does not implement.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& dir);

// Checks that `tokenizer`, loaded from `tokenizer_dir`, belongs with a model whose embedding has `model_vocab` rows
// (vocab_size in `config_path`). A tokenizer that can produce ids past the embedding is an input error naming both
// files and both sizes; one that covers less than 90% of the embedding is most likely another model's (models pad
// their embedding by a few rows, not by a tenth) and gets a warning.
void check_tokenizer_fits(const Tokenizer& tokenizer, const std::filesystem::path& tokenizer_dir, int64_t model_vocab,
                          const std::filesystem::path& config_path);

// The tokenizer of a model: loaded from `tokenizer_dir` (empty: `model_dir`) and checked to fit the model's
// embedding of `model_vocab` rows (vocab_size in `config_path`).
std::unique_ptr<Tokenizer> load_model_tokenizer(const std::filesystem::path& model_dir,
                                                const std::filesystem::path& tokenizer_dir, int64_t model_vocab,
                                                const std::filesystem::path& config_path);

// Replaces each maximal ill-formed subsequence of `bytes` by U+FFFD, exactly as Python's
// bytes.decode("utf-8", errors="replace") and Rust's String::from_utf8_lossy do; valid UTF-8 is returned unchanged.
std::string sanitize_utf8(std::string_view bytes);

}  // namespace optima
