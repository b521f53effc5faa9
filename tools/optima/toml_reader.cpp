// The TOML subset reader of settings files (see toml_reader.h).
#include "toml_reader.h"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <cstdint>
#include <optional>
#include <regex>
#include <string>

#include "optima/core/error.h"

namespace optima::cli {
namespace {

void append_utf8(uint32_t code, std::string& out) {
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else if (code < 0x10000) {
    out += static_cast<char>(0xE0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code >> 18));
    out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
}

// Classifies an unquoted value: TOML's integers (decimal, 0x, 0o, 0b), floats, inf/nan and booleans.
std::optional<TomlType> bare_value_type(const std::string& token) {
  static const std::regex integer(
      "[+-]?(0|[1-9](_?[0-9])*)|0x[0-9A-Fa-f](_?[0-9A-Fa-f])*|0o[0-7](_?[0-7])*|0b[01](_?[01])*");
  static const std::regex floating(
      "[+-]?(0|[1-9](_?[0-9])*)((\\.[0-9](_?[0-9])*)([eE][+-]?[0-9](_?[0-9])*)?|[eE][+-]?[0-9](_?[0-9])*)|"
      "[+-]?(inf|nan)");
  if (token == "true" || token == "false") return TomlType::kBoolean;
  if (std::regex_match(token, integer)) return TomlType::kInteger;
  if (std::regex_match(token, floating)) return TomlType::kFloat;
  return std::nullopt;
}

// A character for a message: itself in quotes, or its code when it would not print as itself.
std::string shown_char(char c) {
  if (std::isprint(static_cast<unsigned char>(c)) != 0) return fmt::format("'{}'", c);
  return fmt::format("byte 0x{:02X}", static_cast<unsigned char>(c));
}

class TomlReader {
 public:
  TomlReader(std::string_view file, std::string_view text) : file_(file), text_(text) {}

  TomlDocument read() {
    TomlDocument document;
    std::vector<std::string> section;
    for (skip_blank_lines(); !at_end(); skip_blank_lines()) {
      if (peek() == '[') {
        section = read_section_header();
        document.sections.push_back({section, line_});
      } else {
        document.entries.push_back(read_key_value(section));
      }
      expect_end_of_line();
    }
    return document;
  }

 private:
  bool at_end() const { return pos_ >= text_.size(); }
  char peek(size_t ahead = 0) const { return pos_ + ahead < text_.size() ? text_[pos_ + ahead] : '\0'; }
  char next() {
    const char c = text_[pos_++];
    if (c == '\n') ++line_;
    return c;
  }

  [[noreturn]] void fail_syntax(std::string_view what, std::string_view expected = {},
                                std::string_view found = {}) const {
    const std::string where = key_.empty() ? fmt::format("{}: line {}", file_, line_)
                                           : fmt::format("{}: line {}: key '{}'", file_, line_, key_);
    optima::fail(optima::ErrorKind::kUsage, where, what, expected, found);
  }

  void skip_spaces() {
    while (peek() == ' ' || peek() == '\t' || (peek() == '\r' && peek(1) == '\n')) ++pos_;
  }
  void skip_comment() {
    if (peek() == '#')
      while (!at_end() && peek() != '\n') ++pos_;
  }
  // Leaves the reader on the next line that holds more than spaces and a comment (or at the end).
  void skip_blank_lines() {
    for (skip_spaces(), skip_comment(); peek() == '\n'; skip_spaces(), skip_comment()) next();
  }
  void expect_end_of_line() {
    skip_spaces();
    skip_comment();
    if (!at_end() && next() != '\n') fail_syntax("unexpected text after the value");
    key_.clear();
  }

  std::vector<std::string> read_section_header() {
    ++pos_;
    if (peek() == '[') fail_syntax("arrays of tables ([[...]]) hold no settings");
    std::vector<std::string> path = read_key_path();
    if (peek() != ']') fail_syntax("a section header ends with ']'");
    ++pos_;
    return path;
  }

  std::vector<std::string> read_key_path() {
    std::vector<std::string> parts;
    do {
      if (!parts.empty()) ++pos_;  // the '.' between parts
      skip_spaces();
      parts.push_back(read_simple_key());
      skip_spaces();
    } while (peek() == '.');
    return parts;
  }

  std::string read_simple_key() {
    if (peek() == '"') return read_basic_string();
    if (peek() == '\'') return read_literal_string();
    const size_t start = pos_;
    while (std::isalnum(static_cast<unsigned char>(peek())) != 0 || peek() == '_' || peek() == '-') ++pos_;
    if (pos_ == start)
      fail_syntax("a key is missing", "letters, digits, '_' or '-'",
                  at_end() || peek() == '\n' ? "the end of the line" : shown_char(peek()));
    return std::string(text_.substr(start, pos_ - start));
  }

  TomlEntry read_key_value(const std::vector<std::string>& section) {
    TomlEntry entry;
    entry.line = line_;
    entry.path = section;
    for (std::string& part : read_key_path()) entry.path.push_back(std::move(part));
    key_ = entry.path.back();
    if (peek() != '=') fail_syntax("a key needs '= value'");
    ++pos_;
    skip_spaces();
    if (peek() == '[') {
      entry.is_array = true;
      entry.values = read_array();
    } else {
      entry.values = {read_scalar()};
    }
    return entry;
  }

  std::vector<TomlScalar> read_array() {
    ++pos_;
    std::vector<TomlScalar> values;
    for (skip_blank_lines(); peek() != ']'; skip_blank_lines()) {
      if (at_end()) fail_syntax("a list is not closed with ']'");
      values.push_back(read_scalar());
      skip_blank_lines();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() != ']') {
        fail_syntax("values in a list are separated by ',' and the list ends with ']'");
      }
    }
    ++pos_;
    return values;
  }

  TomlScalar read_scalar() {
    const char c = peek();
    if ((c == '"' || c == '\'') && peek(1) == c && peek(2) == c) fail_syntax("multi-line strings are not supported");
    if (c == '"') return {TomlType::kString, read_basic_string()};
    if (c == '\'') return {TomlType::kString, read_literal_string()};
    if (c == '[') fail_syntax("lists of lists hold no settings");
    if (c == '{') fail_syntax("inline tables hold no settings");
    return read_bare_value();
  }

  TomlScalar read_bare_value() {
    const size_t start = pos_;
    while (!at_end() && std::string_view(" \t\r\n,]#").find(peek()) == std::string_view::npos) ++pos_;
    std::string token(text_.substr(start, pos_ - start));
    if (token.empty()) fail_syntax("a value is missing");
    const std::optional<TomlType> type = bare_value_type(token);
    if (!type) fail_syntax("not a value", "a quoted string, a number, true or false", token);
    std::erase(token, '_');
    return {*type, token};
  }

  std::string read_basic_string() {
    ++pos_;
    std::string out;
    for (;;) {
      if (at_end() || peek() == '\n') fail_syntax("a string is not closed on its line");
      const char c = next();
      if (c == '"') return out;
      if (c == '\\') {
        read_escape(out);
      } else {
        out += c;
      }
    }
  }

  std::string read_literal_string() {
    const size_t start = ++pos_;
    const size_t end = text_.find_first_of("'\n", start);
    if (end == std::string_view::npos || text_[end] != '\'') fail_syntax("a string is not closed on its line");
    pos_ = end + 1;
    return std::string(text_.substr(start, end - start));
  }

  void read_escape(std::string& out) {
    const char c = at_end() ? '\0' : next();
    if (const size_t i = kEscapeLetters.find(c); i != std::string_view::npos) {
      out += kEscapedChars[i];
    } else if (c == 'u' || c == 'U') {
      append_utf8(read_code_point(c == 'u' ? 4 : 8), out);
    } else {
      fail_syntax("unknown escape in a string", "\\b \\t \\n \\f \\r \\\" \\\\ \\uXXXX or \\UXXXXXXXX",
                  fmt::format("\\{}", c));
    }
  }

  uint32_t read_code_point(size_t digits) {
    const std::string_view hex = text_.substr(pos_, digits);
    uint32_t code = 0;
    const auto [end, error] = std::from_chars(hex.data(), hex.data() + hex.size(), code, 16);
    if (hex.size() != digits || error != std::errc() || end != hex.data() + hex.size() || code > 0x10FFFF ||
        (code >= 0xD800 && code <= 0xDFFF))
      fail_syntax("bad unicode escape", fmt::format("{} hex digits of a code point", digits), hex);
    pos_ += digits;
    return code;
  }

  std::string_view file_, text_;
  size_t pos_ = 0;
  int line_ = 1;
  std::string key_;  // the key whose value is being read, for messages
};

}  // namespace

TomlDocument read_toml(std::string_view file, std::string_view text) {
  return TomlReader(file, text).read();
}

}  // namespace optima::cli
