// Reading JSON files (config.json, shard indexes, tokenizer configs) with errors that name the file.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace optima {

// Parses a whole JSON file; a missing file or malformed JSON is an input error naming the file (and the byte).
nlohmann::json read_json_file(const std::filesystem::path& path);
// Parses JSON text read from `path` (named in errors only): what read_json_file does once the file is read.
nlohmann::json parse_json_text(std::string_view text, const std::filesystem::path& path);

// The JSON type of `value` in words ("string", "integer", "object", ...), for messages.
std::string json_type_name(const nlohmann::json& value);

}  // namespace optima
