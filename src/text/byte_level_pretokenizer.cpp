// The byte-level pre-tokenizer of byte-level BPE: GPT-2's byte-to-unicode table and the PCRE2 regex wrapper that
// splits text into pre-tokens (see byte_level_pretokenizer.h).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "byte_level_pretokenizer.h"

#include <fmt/format.h>
#include <pcre2.h>

#include <new>

#include "optima/core/error.h"

namespace optima::text_detail {
namespace {

std::string utf8_encode(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

}  // namespace

// Decodes the code point at s[i] (s is valid UTF-8 or at least starts a sequence) and advances i.
uint32_t utf8_next(std::string_view s, size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  size_t len = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  if (i + len > s.size()) len = s.size() - i;
  uint32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return cp;
}

ByteUnicode::ByteUnicode() {
  std::array<bool, 256> direct{};
  for (int b = 0; b < 256; ++b) direct[b] = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const uint32_t cp = direct[b] ? static_cast<uint32_t>(b) : next++;
    byte_to_utf8[b] = utf8_encode(cp);
    cp_to_byte[cp] = static_cast<uint8_t>(b);
  }
}

const ByteUnicode& byte_unicode() {
  static const ByteUnicode table;
  return table;
}

Regex::Regex(const std::string& pattern, bool literal, const std::string& where) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  // PCRE2 refuses PCRE2_UCP together with PCRE2_LITERAL ("invalid option bits"); a literal has no classes anyway.
  const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  code_ =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &err, &err_offset, nullptr);
  if (!code_) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    fail_input(where, "cannot compile pre-tokenizer regex", "a PCRE2-compatible pattern",
               fmt::format("{} at offset {}", reinterpret_cast<const char*>(msg), err_offset));
  }
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  pcre2_code_free(code_);
}

void Regex::split_impl(std::string_view s, PieceFn f, void* ctx) const {
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
  if (!md) throw std::bad_alloc();
  const auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0, emitted = 0;
  while (pos < s.size()) {
    int rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {  // pathological input: the interpreter keeps its stack on the heap
      rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(md);
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof(msg));
      fail_input("tokenizer pre-tokenizer regex", "match failed", "a successful match",
                 reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t start = ov[0], end = ov[1];
    if (start > emitted) f(ctx, emitted, start);
    if (end > start) {
      f(ctx, start, end);
      emitted = pos = end;
    } else {  // an empty match: step over one character so the loop always advances
      pos = start + 1;
      while (pos < s.size() && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) ++pos;
    }
  }
  if (emitted < s.size()) f(ctx, emitted, s.size());
  pcre2_match_data_free(md);
}

}  // namespace optima::text_detail
