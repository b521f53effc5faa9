// A reader of the TOML subset that settings files use (strings, integers, floats, booleans, arrays of them,
// [sections] one level deep): what `optima --config FILE.toml` reads. Syntax errors are usage errors naming the file
// and the line.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace optima::cli {

enum class TomlType { kString, kInteger, kFloat, kBoolean };

struct TomlScalar {
  TomlType type;
  std::string text;  // strings unescaped; numbers as written, without '_' digit separators
};

struct TomlEntry {
  std::vector<std::string> path;  // the [section] (if any), then the key's parts
  std::vector<TomlScalar> values;
  bool is_array = false;
  int line = 0;
};

struct TomlSection {
  std::vector<std::string> path;
  int line = 0;
};

struct TomlDocument {
  std::vector<TomlEntry> entries;
  std::vector<TomlSection> sections;
};

// TOML's one-letter escapes in basic strings ("\t"), and the characters they stand for.
inline constexpr std::string_view kEscapeLetters = "btnfr\"\\";
inline constexpr std::string_view kEscapedChars = "\b\t\n\f\r\"\\";

// Reads the whole document; a usage error names the file, the line and what was expected.
TomlDocument read_toml(std::string_view file, std::string_view text);

}  // namespace optima::cli
