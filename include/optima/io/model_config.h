// A typed view of a Hugging Face config.json.
//
// `require` and `value_or` read one key and name the key and the file when it is missing or of the wrong type, so
// architecture code never has to format such errors itself.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace optima {

class ModelConfig {
 public:
  // Reads `<dir>/config.json` (or a config file given directly).
  static ModelConfig load(const std::filesystem::path& path);
  // Parses the text of a config.json read from `path` (named in errors only); load() is read + parse.
  static ModelConfig parse(std::string_view text, const std::filesystem::path& path);
  ModelConfig(nlohmann::json json, std::filesystem::path path);

  const nlohmann::json& json() const { return json_; }
  const std::filesystem::path& path() const { return path_; }
  bool has(std::string_view key) const;

  // Supported T: int64_t, double, bool, std::string.
  template <typename T>
  T require(std::string_view key) const;
  template <typename T>
  T value_or(std::string_view key, T fallback) const;
  // Like value_or, but a JSON null counts as absent (HF writes "rope_scaling": null).
  template <typename T>
  std::optional<T> optional(std::string_view key) const;

  std::string model_type() const { return require<std::string>("model_type"); }

 private:
  nlohmann::json json_;
  std::filesystem::path path_;
};

}  // namespace optima
