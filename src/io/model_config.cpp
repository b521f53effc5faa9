// Typed access to config.json keys, with errors naming the key and file.
#include "optima/io/model_config.h"

#include <cstdint>

#include "optima/core/error.h"
#include "optima/io/json_file.h"

namespace optima {
namespace {

ModelConfig config_object(nlohmann::json json, const std::filesystem::path& path) {
  if (!json.is_object()) fail_input(path.string(), "config is not a JSON object", "an object", json_type_name(json));
  return ModelConfig(std::move(json), path);
}

}  // namespace

ModelConfig ModelConfig::load(const std::filesystem::path& path) {
  std::error_code ec;
  const auto file = std::filesystem::is_directory(path, ec) ? path / "config.json" : path;
  return config_object(read_json_file(file), file);
}

ModelConfig ModelConfig::parse(std::string_view text, const std::filesystem::path& path) {
  return config_object(parse_json_text(text, path), path);
}

ModelConfig::ModelConfig(nlohmann::json json, std::filesystem::path path)
    : json_(std::move(json)), path_(std::move(path)) {}

bool ModelConfig::has(std::string_view key) const {
  auto it = json_.find(key);
  return it != json_.end() && !it->is_null();
}

namespace {

template <typename T>
constexpr std::string_view expected_name() {
  if constexpr (std::is_same_v<T, int64_t>) return "an integer";
  if constexpr (std::is_same_v<T, double>) return "a number";
  if constexpr (std::is_same_v<T, bool>) return "a boolean";
  if constexpr (std::is_same_v<T, std::string>) return "a string";
}

template <typename T>
bool has_type(const nlohmann::json& v) {
  if constexpr (std::is_same_v<T, int64_t>) return v.is_number_integer();
  if constexpr (std::is_same_v<T, double>) return v.is_number();
  if constexpr (std::is_same_v<T, bool>) return v.is_boolean();
  if constexpr (std::is_same_v<T, std::string>) return v.is_string();
}

template <typename T>
T convert(const nlohmann::json& v, std::string_view key, const std::filesystem::path& path) {
  if (!has_type<T>(v))
    fail_input(fmt::format("{}: key '{}'", path.string(), key), "wrong type", std::string(expected_name<T>()),
               fmt::format("{} {}", json_type_name(v), v.dump()));
  return v.get<T>();
}

}  // namespace

template <typename T>
T ModelConfig::require(std::string_view key) const {
  auto it = json_.find(key);
  if (it == json_.end() || it->is_null())
    fail_input(fmt::format("{}: key '{}'", path_.string(), key), "required key is missing");
  return convert<T>(*it, key, path_);
}

template <typename T>
T ModelConfig::value_or(std::string_view key, T fallback) const {
  auto it = json_.find(key);
  if (it == json_.end() || it->is_null()) return fallback;
  return convert<T>(*it, key, path_);
}

template <typename T>
std::optional<T> ModelConfig::optional(std::string_view key) const {
  auto it = json_.find(key);
  if (it == json_.end() || it->is_null()) return std::nullopt;
  return convert<T>(*it, key, path_);
}

template int64_t ModelConfig::require<int64_t>(std::string_view) const;
template double ModelConfig::require<double>(std::string_view) const;
template bool ModelConfig::require<bool>(std::string_view) const;
template std::string ModelConfig::require<std::string>(std::string_view) const;
template int64_t ModelConfig::value_or<int64_t>(std::string_view, int64_t) const;
template double ModelConfig::value_or<double>(std::string_view, double) const;
template bool ModelConfig::value_or<bool>(std::string_view, bool) const;
template std::string ModelConfig::value_or<std::string>(std::string_view, std::string) const;
template std::optional<int64_t> ModelConfig::optional<int64_t>(std::string_view) const;
template std::optional<double> ModelConfig::optional<double>(std::string_view) const;
template std::optional<bool> ModelConfig::optional<bool>(std::string_view) const;
template std::optional<std::string> ModelConfig::optional<std::string>(std::string_view) const;

}  // namespace optima
