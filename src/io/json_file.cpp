// JSON file reading with clear errors.
#include "optima/io/json_file.h"

#include <fstream>
#include <sstream>

#include "optima/core/error.h"

namespace optima {

nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    fail_input(path.string(), std::filesystem::exists(path, ec) ? "cannot read file" : "file does not exist");
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return parse_json_text(buffer.str(), path);
}

nlohmann::json parse_json_text(std::string_view text, const std::filesystem::path& path) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number like 1e400
    fail_input(path.string(), fmt::format("malformed JSON: {}", e.what()));
  }
}

std::string json_type_name(const nlohmann::json& value) {
  if (value.is_number_integer()) return "integer";
  if (value.is_number_float()) return "number";
  return value.type_name();
}

}  // namespace optima
