// Parsing sizes such as "5GB" and "2GiB" (see byte_size.h).
#include "optima/core/byte_size.h"

#include <cctype>
#include <stdexcept>
#include <string>
#include <utility>

#include "optima/core/error.h"

namespace optima {

uint64_t parse_byte_size(std::string_view text) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  const std::string number(text.substr(0, i));
  std::string unit(text.substr(i));
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double value = 0;
  try {
    size_t used = 0;
    value = std::stod(number, &used);
    if (used != number.size()) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    fail_usage(fmt::format("cannot read size '{}' (expected e.g. 5GB, 500MB, 2GiB or a number of bytes)", text));
  }
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},      {"B", 1},      {"KB", 1e3},        {"MB", 1e6},           {"GB", 1e9},
      {"TB", 1e12}, {"KIB", 1024}, {"MIB", 1048576.0}, {"GIB", 1073741824.0}, {"TIB", 1099511627776.0}};
  for (const auto& [name, scale] : kUnits)
    if (unit == name) {
      if (value <= 0) fail_usage(fmt::format("size '{}' must be positive", text));
      return static_cast<uint64_t>(value * scale);
    }
  fail_usage(fmt::format("unknown size unit in '{}' (expected B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)", text));
}

}  // namespace optima
