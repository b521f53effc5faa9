// libFuzzer target: loading a byte-level BPE tokenizer from tokenizer.json (+ tokenizer_config.json), then encoding
// and decoding with what was loaded.
//
// Input layout: the tokenizer.json text, optionally followed by a NUL byte and tokenizer_config.json text, optionally
// followed by another NUL byte and text to encode (JSON text holds no raw NUL, so the split is unambiguous). Inputs
// that are not JSON are skipped: the JSON parser's own errors are covered by the config fuzzer.
//
// A rejected tokenizer must be an optima::Error; anything else is a finding. A loaded tokenizer must keep its
// promises: every id encode() returns lies in [0, vocab_size()) and decode() and piece() accept it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "optima/core/error.h"
#include "optima/text/tokenizer.h"
#include "text/tokenizer_internal.h"

namespace {

using nlohmann::json;

[[noreturn]] void broken(const char* what, int64_t id) {
  std::fprintf(stderr, "loaded tokenizer breaks a promise: %s (id %lld)\n", what, static_cast<long long>(id));
  std::abort();
}

// Texts that reach the interesting paths of any byte-level BPE: spaces and newlines, digits, contractions, non-ASCII
// letters, ill-formed UTF-8 and the spellings of common special tokens.
constexpr std::string_view kProbes[] = {
    "Hello, world! It's 2024.\n\n  Tabs\tand   spaces ",
    "na\xc3\xafve caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80 \xff\xfe broken \xe2\x82",
    "<s></s><unk><pad><|endoftext|><|begin_of_text|> <mask>  x</tool>",
    "",
};

void exercise(const optima::Tokenizer& tok, std::string_view text) {
  const int64_t vocab = tok.vocab_size();
  for (bool add_special : {true, false}) {
    const std::vector<int64_t> ids = tok.encode(text, add_special);
    for (int64_t id : ids) {
      if (id < 0 || id >= vocab) broken("encode returned an id outside [0, vocab_size())", id);
      try {
        (void)tok.piece(id);
      } catch (const optima::Error&) {
        broken("piece() rejects an id encode() returned", id);
      }
    }
    try {
      (void)tok.decode(ids);
    } catch (const optima::Error&) {
      broken("decode() rejects ids encode() returned", -1);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t first_nul = input.find('\0');
  const std::string_view tokenizer_text = input.substr(0, first_nul);
  std::string_view config_text, text;
  if (first_nul != std::string_view::npos) {
    const std::string_view rest = input.substr(first_nul + 1);
    const size_t second_nul = rest.find('\0');
    config_text = rest.substr(0, second_nul);
    if (second_nul != std::string_view::npos) text = rest.substr(second_nul + 1);
  }
  const json tokenizer_json = json::parse(tokenizer_text, nullptr, /*allow_exceptions=*/false);
  if (tokenizer_json.is_discarded()) return 0;
  try {
    optima::text_detail::TokenizerConfig config;
    config.dir = "fuzz";
    if (!config_text.empty()) {
      const json config_json = json::parse(config_text, nullptr, /*allow_exceptions=*/false);
      if (config_json.is_discarded()) return 0;
      optima::text_detail::apply_tokenizer_config(config_json, "fuzz/tokenizer_config.json", config);
    }
    // What load_tokenizer() does with a tokenizer.json when no tokenizer.model lies beside it.
    (void)optima::text_detail::is_byte_level_tokenizer_json(tokenizer_json);
    const std::unique_ptr<optima::Tokenizer> tok =
        optima::text_detail::make_bpe_from_tokenizer_json("fuzz/tokenizer.json", tokenizer_json, config);
    (void)tok->describe();
    for (std::string_view probe : kProbes) exercise(*tok, probe);
    exercise(*tok, text);
  } catch (const optima::Error&) {
    // a clear rejection of a malformed or unsupported tokenizer: the expected outcome for most inputs
  }
  return 0;
}
