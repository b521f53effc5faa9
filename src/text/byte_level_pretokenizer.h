// The byte-level pre-tokenizer of byte-level BPE (private to src/text): GPT-2's byte-to-unicode alphabet, the UTF-8
// decoding it needs, and the PCRE2 regex that splits text into pre-tokens. Kept apart from the BPE model so that
// PCRE2's header and macros stay inside byte_level_pretokenizer.cpp.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>

// pcre2_code for 8-bit code units (what pcre2.h names it with PCRE2_CODE_UNIT_WIDTH 8), declared here so that this
// header does not pull in pcre2.h.
struct pcre2_real_code_8;

namespace optima::text_detail {

// GPT-2's pre-tokenizer (the one `tokenizers`' ByteLevel pre-tokenizer uses when use_regex is true).
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Decodes the code point at s[i] (s is valid UTF-8 or at least starts a sequence) and advances i.
uint32_t utf8_next(std::string_view s, size_t& i);

// GPT-2's reversible map from bytes to printable code points, so that every byte sequence is a string of
// "visible" characters (space -> 'Ġ', newline -> 'Ċ').
struct ByteUnicode {
  std::array<std::string, 256> byte_to_utf8;
  std::unordered_map<uint32_t, uint8_t> cp_to_byte;
  ByteUnicode();
};

// The table, built once.
const ByteUnicode& byte_unicode();

// A compiled PCRE2 pattern (UTF + Unicode properties, JIT-compiled when the platform allows).
class Regex {
 public:
  // Throws optima::Error (kInput) naming `where` when the pattern does not compile.
  Regex(const std::string& pattern, bool literal, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls f(start, end) for the matches and, as `tokenizers`' "Isolated" split behaviour does, for the gaps between
  // them, in order. `s` must be valid UTF-8 (checked once by the caller), so PCRE2's per-call check is skipped.
  template <typename F>
  void split(std::string_view s, F&& f) const {
    using Fn = std::remove_reference_t<F>;
    split_impl(
        s, [](void* ctx, size_t start, size_t end) { (*static_cast<Fn*>(ctx))(start, end); },
        const_cast<void*>(static_cast<const void*>(std::addressof(f))));
  }

  bool jit() const { return jit_; }

 private:
  // The matching loop lives next to PCRE2 in the .cpp; `f` reaches it as a plain function pointer and context
  // rather than a std::function, which could allocate on every call of this hot path.
  using PieceFn = void (*)(void* ctx, size_t start, size_t end);
  void split_impl(std::string_view s, PieceFn f, void* ctx) const;

  pcre2_real_code_8* code_ = nullptr;
  bool jit_ = false;
};

}  // namespace optima::text_detail
