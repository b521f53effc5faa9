// Spelling enum settings: one table per enum maps each value to the name the command line, config files and
// reports use, so that a setting is parsed once at the edge and compared as a typed value everywhere else.
#pragma once

#include <fmt/format.h>

#include <span>
#include <string>
#include <string_view>

#include "optima/core/error.h"

namespace optima {

template <typename Enum>
struct EnumName {
  Enum value;
  std::string_view name;
  bool alias = false;  // accepted when parsing, never printed or listed
};

// "a, b or c": the names a setting accepts, for messages.
template <typename Enum>
std::string enum_choices(std::span<const EnumName<Enum>> names) {
  std::string out;
  size_t listed = 0, count = 0;
  for (const auto& n : names) count += n.alias ? 0 : 1;
  for (const auto& n : names) {
    if (n.alias) continue;
    if (listed > 0) out += listed + 1 == count ? " or " : ", ";
    out += n.name;
    ++listed;
  }
  return out;
}

// The value of `text`; a usage error "unknown SETTING 'text' (expected a or b)" otherwise.
template <typename Enum>
Enum parse_enum(std::span<const EnumName<Enum>> names, std::string_view text, std::string_view setting) {
  for (const auto& n : names)
    if (n.name == text) return n.value;
  fail_usage(fmt::format("unknown {} '{}' (expected {})", setting, text, enum_choices(names)));
}

template <typename Enum>
std::string_view enum_name(std::span<const EnumName<Enum>> names, Enum value) {
  for (const auto& n : names)
    if (n.value == value && !n.alias) return n.name;
  fail(ErrorKind::kInternal, "enum_name", fmt::format("no name for value {}", static_cast<int>(value)));
}

}  // namespace optima
