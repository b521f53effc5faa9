// libFuzzer target: encoding arbitrary bytes with fixed, real byte-level BPE tokenizers, and decoding the result.
//
// The tokenizers, loaded once: GPT-2 (vocab.json + merges.txt) from the offline assets, $OPTIMA_FUZZ_TOKENIZER or
// else <assets>/tokenizers/gpt2 with <assets> = $OPTIMA_ASSETS or the folder compiled in; and the repository's
// tests/data/tokenizer/tiny_bpe (a LLaMA-3-style tokenizer.json with added tokens that strip whitespace).
//
// Every input must encode without an exception; every id must be in [0, vocab_size()) and decode; and GPT-2's
// byte-level BPE is lossless, so decoding gives back the input (with ill-formed UTF-8 replaced, as encode does)
// unless the input spells its special token <|endoftext|>, which decode skips.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "optima/core/error.h"
#include "optima/text/tokenizer.h"

namespace {

namespace fs = std::filesystem;

std::unique_ptr<optima::Tokenizer> g_gpt2;
std::unique_ptr<optima::Tokenizer> g_tiny;

fs::path gpt2_dir() {
  if (const char* dir = std::getenv("OPTIMA_FUZZ_TOKENIZER"); dir && *dir) return dir;
  const char* assets = std::getenv("OPTIMA_ASSETS");
  return fs::path(assets && *assets ? assets : OPTIMA_FUZZ_ASSETS_DEFAULT) / "tokenizers" / "gpt2";
}

std::unique_ptr<optima::Tokenizer> load(const fs::path& dir) {
  try {
    return optima::load_tokenizer(dir);
  } catch (const optima::Error& e) {
    std::fprintf(stderr, "fuzz_bpe_encode: cannot load the tokenizer in %s: %s\n", dir.c_str(), e.what());
    std::exit(2);
  }
}

[[noreturn]] void broken(const char* what, std::string_view text) {
  std::fprintf(stderr, "encode breaks a promise: %s (input of %zu bytes)\n", what, text.size());
  std::abort();
}

std::vector<int64_t> encode_checked(const optima::Tokenizer& tok, std::string_view text) {
  const std::vector<int64_t> ids = tok.encode(text, /*add_special=*/false);
  for (int64_t id : ids)
    if (id < 0 || id >= tok.vocab_size()) broken("an id outside [0, vocab_size())", text);
  return ids;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  g_gpt2 = load(gpt2_dir());
  g_tiny = load(fs::path(OPTIMA_FUZZ_DATA_DIR) / "tokenizer" / "tiny_bpe");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  // An optima::Error here is a finding too: encoding accepts any bytes, and decode any id encode returned.
  const std::vector<int64_t> ids = encode_checked(*g_gpt2, text);
  const std::string decoded = g_gpt2->decode(ids);
  if (text.find("<|endoftext|>") == std::string_view::npos && decoded != optima::sanitize_utf8(text))
    broken("GPT-2 decode(encode(text)) differs from the text", text);
  (void)g_tiny->decode(encode_checked(*g_tiny, text));
  (void)g_tiny->encode(text, /*add_special=*/true);
  return 0;
}
