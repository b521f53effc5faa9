// Reading and writing settings files, checked like the command line (see settings_file.h).
#include "settings_file.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <map>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "optima/core/error.h"
#include "toml_reader.h"

namespace optima::cli {
namespace {

// --- settings files (--config FILE.toml) -------------------------------------------------------------------------
// CLI11's own TOML reader skips keys it does not know and strips quotes without looking at types, so a misspelt key
// or a value of the wrong type would silently leave a default in place (a sweep would then prune at 0.5, not 0.6).
// optima reads the file itself, a TOML subset (strings, integers, floats, booleans, arrays of them, [sections] one
// level deep), and checks every key and value against the options before CLI11 applies them.

// What an option takes, as far as a settings file can tell.
enum class ValueType { kFlag, kInteger, kUnsigned, kNumber, kString, kAny };

ValueType value_type(const CLI::Option& option) {
  if (option.get_expected_max() == 0) return ValueType::kFlag;
  const std::string type = option.get_type_name();
  const std::string base = type.substr(0, type.find(':'));  // "FLOAT:POSITIVE": the part after ':' is a validator
  if (base == "INT") return ValueType::kInteger;
  if (base == "UINT") return ValueType::kUnsigned;
  if (base == "FLOAT") return ValueType::kNumber;
  if (base == "TEXT") return ValueType::kString;
  return ValueType::kAny;
}

bool takes_list(const CLI::Option& option) {
  return option.get_expected_max() > 1;
}

bool accepts(ValueType wanted, TomlType given) {
  switch (wanted) {
    case ValueType::kFlag: return given == TomlType::kBoolean;
    case ValueType::kInteger:
    case ValueType::kUnsigned: return given == TomlType::kInteger;
    case ValueType::kNumber: return given == TomlType::kInteger || given == TomlType::kFloat;
    case ValueType::kString: return given == TomlType::kString;
    case ValueType::kAny: return true;
  }
  return false;
}

std::string describe_type(ValueType type, bool plural) {
  switch (type) {
    case ValueType::kFlag: return "true or false";
    case ValueType::kInteger: return plural ? "integers" : "an integer";
    case ValueType::kUnsigned: return plural ? "non-negative integers" : "a non-negative integer";
    case ValueType::kNumber: return plural ? "numbers" : "a number";
    case ValueType::kString: return plural ? "strings" : "a string";
    case ValueType::kAny: return plural ? "values" : "a value";
  }
  return {};
}

std::string toml_string(const std::string& text);

std::string describe_scalar(const TomlScalar& scalar) {
  switch (scalar.type) {
    case TomlType::kString: return "the string " + toml_string(scalar.text);
    case TomlType::kInteger: return "the integer " + scalar.text;
    case TomlType::kFloat: return "the float " + scalar.text;
    case TomlType::kBoolean: return scalar.text;
  }
  return {};
}

std::string describe_list(const std::vector<TomlScalar>& values) {
  if (values.empty()) return "an empty list";
  return fmt::format("a list of {} value{}", values.size(), values.size() == 1 ? "" : "s");
}

// An integer literal's sign and magnitude; nullopt past 64 bits.
struct IntegerValue {
  bool negative = false;
  uint64_t magnitude = 0;
};

std::optional<IntegerValue> integer_value(std::string_view text) {
  IntegerValue value;
  if (!text.empty() && (text.front() == '+' || text.front() == '-')) {
    value.negative = text.front() == '-';
    text.remove_prefix(1);
  }
  int base = 10;
  if (text.size() > 2 && text[0] == '0') {
    base = text[1] == 'x' ? 16 : text[1] == 'o' ? 8 : text[1] == 'b' ? 2 : 10;
    if (base != 10) text.remove_prefix(2);
  }
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value.magnitude, base);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  if (value.magnitude == 0) value.negative = false;
  return value;
}

bool in_range(const IntegerValue& value, ValueType type) {
  constexpr uint64_t kInt64Max = std::numeric_limits<int64_t>::max();
  if (type == ValueType::kUnsigned) return !value.negative;
  if (type == ValueType::kInteger) return value.magnitude <= kInt64Max + (value.negative ? 1 : 0);
  return true;
}

// Where a key is, for messages: "FILE: key 'sparsty'", or "FILE: key 'sparsty' in [prune]".
std::string key_where(std::string_view file, const TomlEntry& entry) {
  if (entry.path.size() == 1) return fmt::format("{}: key '{}'", file, entry.path.back());
  std::vector<std::string> section(entry.path.begin(), entry.path.end() - 1);
  return fmt::format("{}: key '{}' in [{}]", file, entry.path.back(), fmt::join(section, "."));
}

std::string command_name(const CLI::App& app) {
  return app.get_parent() == nullptr ? "optima itself" : "optima " + app.get_name();
}

std::string normalized_key(std::string_view key) {
  std::string out(key);
  for (char& c : out) c = c == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  std::iota(row.begin(), row.end(), size_t{0});
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t substitution = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
      diagonal = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, substitution});
    }
  }
  return row[b.size()];
}

// The keys a file may give an app: its options that are not command-line only.
std::vector<const CLI::Option*> settings_of(const CLI::App& app) {
  return app.get_options([](const CLI::Option* option) { return option->get_configurable(); });
}

// The keys a file may give an app, as written in it.
std::vector<std::string> setting_names(const CLI::App& app) {
  std::vector<std::string> names;
  for (const CLI::Option* option : settings_of(app)) names.push_back(option->get_single_name());
  return names;
}

// Whether `app` has a setting `key` stands for, '_' for '-' and case aside.
bool has_setting_like(const CLI::App& app, std::string_view key) {
  const std::vector<std::string> names = setting_names(app);
  return std::any_of(names.begin(), names.end(),
                     [&](const std::string& name) { return normalized_key(name) == normalized_key(key); });
}

// The name closest to a misspelt one: a typo or two away (or '_' for '-'), or one that contains it
// ('max-windows' -> 'eval-max-windows').
std::optional<std::string> nearest_name(std::string_view misspelt, const std::vector<std::string>& names) {
  const std::string wanted = normalized_key(misspelt);
  std::optional<std::string> best, containing;
  size_t best_distance = std::max<size_t>(1, wanted.size() / 3) + 1;
  for (const std::string& name : names) {
    const size_t distance = edit_distance(wanted, normalized_key(name));
    if (distance < best_distance) best = name, best_distance = distance;
    if (!containing && wanted.size() >= 4 && normalized_key(name).find(wanted) != std::string::npos) containing = name;
  }
  return best ? best : containing;
}

std::vector<CLI::App*> subcommands_of(CLI::App& root) {
  return root.get_subcommands([](CLI::App*) { return true; });
}

CLI::App* find_subcommand(CLI::App& root, std::string_view name) {
  for (CLI::App* sub : subcommands_of(root))
    if (sub->get_name() == name) return sub;
  return nullptr;
}

CLI::Option* find_option(CLI::App& app, const std::string& key) {
  CLI::Option* option = app.get_option_no_throw("--" + key);
  return option != nullptr ? option : app.get_option_no_throw(key);  // a positional, e.g. inspect's model
}

CLI::Option* find_setting(CLI::App& app, const std::string& key) {
  CLI::Option* option = find_option(app, key);
  return option != nullptr && option->get_configurable() ? option : nullptr;
}

// The text CLI11 is given for a checked value: integers in decimal (TOML's 0x/0o/0b and CLI11's differ), the rest
// as read.
std::string cli_text(const TomlScalar& value) {
  if (value.type != TomlType::kInteger) return value.text;
  const std::optional<IntegerValue> integer = integer_value(value.text);
  OPTIMA_ASSERT(integer.has_value());
  return (integer->negative ? "-" : "") + std::to_string(integer->magnitude);
}

// The option a key of the file sets, checked against the running subcommand and the rest of optima.
class SettingsChecker {
 public:
  SettingsChecker(CLI::App& root, std::string file) : root_(root), file_(std::move(file)) {}

  struct Setting {
    CLI::App* app = nullptr;  // null: a bare key read while no subcommand runs (optima stops before using it)
    CLI::Option* option = nullptr;
  };

  void check_section(const std::vector<std::string>& path, int line) const {
    if (path.size() > 1)
      optima::fail_usage(fmt::format("{}: line {}: section [{}]: sections go one level deep, [SUBCOMMAND]", file_, line,
                                     fmt::join(path, ".")));
    if (find_subcommand(root_, path.front()) != nullptr) return;
    std::vector<std::string> names;
    for (const CLI::App* sub : subcommands_of(root_)) names.push_back(sub->get_name());
    const std::string where = fmt::format("{}: line {}: section [{}]", file_, line, path.front());
    if (const std::optional<std::string> nearest = nearest_name(path.front(), names))
      optima::fail_usage(fmt::format("{}: not a subcommand of optima (did you mean [{}]?)", where, *nearest));
    optima::fail(optima::ErrorKind::kUsage, where, "not a subcommand of optima",
                 fmt::format("one of {}", fmt::join(names, ", ")), path.front());
  }

  Setting resolve(const TomlEntry& entry, CLI::App* running) const {
    const std::string& key = entry.path.back();
    if (entry.path.size() > 1) {  // in a [section], or a dotted key such as prune.sparsity
      check_section({entry.path.begin(), entry.path.end() - 1}, entry.line);
      CLI::App* section = find_subcommand(root_, entry.path.front());
      return {section, option_of(*section, entry)};
    }
    if (CLI::Option* option = find_setting(root_, key)) return {&root_, option};
    if (running == nullptr) return {};
    return {running, option_of(*running, entry)};
  }

  void check_value(const TomlEntry& entry, CLI::Option& option) const {
    const ValueType type = value_type(option);
    const bool list = takes_list(option);
    const std::string expected =
        list ? fmt::format("{} or a list of {}", describe_type(type, false), describe_type(type, true))
             : describe_type(type, false);
    if (entry.is_array && (!list || entry.values.empty())) fail_type(entry, expected, describe_list(entry.values));
    for (const TomlScalar& value : entry.values) {
      if (!accepts(type, value.type)) fail_type(entry, expected, describe_scalar(value));
      if (value.type == TomlType::kInteger) check_integer_range(entry, value, type);
      check_validators(entry, option, value);
    }
  }

 private:
  CLI::Option* option_of(CLI::App& app, const TomlEntry& entry) const {
    const std::string& key = entry.path.back();
    CLI::Option* own = find_option(app, key);
    const CLI::Option* found = own != nullptr ? own : find_option(root_, key);
    if (found != nullptr && !found->get_configurable())  // --dump-config, --config, --help
      optima::fail_usage(fmt::format("{}: given on the command line only", where(entry)));
    if (own != nullptr) return own;
    if (found != nullptr)
      optima::fail_usage(fmt::format("{}: a setting of optima itself, not of {} (put it above the first [section])",
                                     where(entry), command_name(app)));
    fail_unknown(app, entry);
  }

  [[noreturn]] void fail_unknown(const CLI::App& app, const TomlEntry& entry) const {
    const std::string& key = entry.path.back();
    std::vector<std::string> owners;
    for (CLI::App* sub : subcommands_of(root_))
      if (sub != &app && has_setting_like(*sub, key)) owners.push_back(sub->get_name());
    const std::optional<std::string> nearest = nearest_name(key, setting_names(app));
    std::string what =
        owners.empty() ? fmt::format("not a setting of {}", command_name(app))
                       : fmt::format("a setting of optima {}, not of {}", fmt::join(owners, ", "), command_name(app));
    if (nearest) {
      what += fmt::format(" (did you mean '{}'?)", *nearest);
    } else if (!owners.empty()) {
      what += fmt::format(" (settings of optima {0} go under [{0}])", owners.front());
    }
    optima::fail_usage(fmt::format("{}: {}", where(entry), what));
  }

  [[noreturn]] void fail_type(const TomlEntry& entry, std::string_view expected, std::string_view found) const {
    optima::fail(optima::ErrorKind::kUsage, where(entry), "wrong type", expected, found);
  }

  void check_integer_range(const TomlEntry& entry, const TomlScalar& value, ValueType type) const {
    const std::optional<IntegerValue> integer = integer_value(value.text);
    if (integer && in_range(*integer, type)) return;
    optima::fail(optima::ErrorKind::kUsage, where(entry), "out of range",
                 type == ValueType::kUnsigned ? "an integer from 0 to 2^64-1" : "a 64-bit integer", value.text);
  }

  // Runs the option's own checks (e.g. a positive --dist-timeout) here, where the message can name the file.
  void check_validators(const TomlEntry& entry, CLI::Option& option, const TomlScalar& value) const {
    for (int i = 0;; ++i) {
      const CLI::Validator* validator = nullptr;
      try {
        validator = option.get_validator(i);
      } catch (const CLI::OptionNotFound&) {
        return;
      }
      std::string text = cli_text(value);
      if (const std::string complaint = (*validator)(text); !complaint.empty())
        optima::fail_usage(fmt::format("{}: {}", where(entry), complaint));
    }
  }

  std::string where(const TomlEntry& entry) const { return key_where(file_, entry); }

  CLI::App& root_;
  std::string file_;
};

// --- writing settings (--dump-config) ----------------------------------------------------------------------------

std::string toml_string(const std::string& text) {
  const auto is_control = [](char c) { return (static_cast<unsigned char>(c) < 0x20) || c == 0x7F; };
  const bool has_control = std::any_of(text.begin(), text.end(), is_control);
  // A regular expression or Windows path reads better as a literal string, where '\' is itself.
  if (text.find('\\') != std::string::npos && text.find('\'') == std::string::npos && !has_control)
    return "'" + text + "'";
  std::string out = "\"";
  for (const char c : text) {
    if (const size_t i = kEscapedChars.find(c); i != std::string_view::npos) {
      out += '\\';
      out += kEscapeLetters[i];
    } else if (is_control(c)) {
      out += fmt::format("\\u{:04X}", static_cast<unsigned char>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string toml_float(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  std::string text = fmt::format("{}", value);  // the shortest text that reads back as the same double
  if (text.find_first_of(".e") == std::string::npos) text += ".0";
  return text;
}

template <typename Number>
Number converted(const std::string& text) {
  Number number{};
  OPTIMA_ASSERT(CLI::detail::lexical_cast(text, number));  // CLI11 accepted this text when it parsed it
  return number;
}

std::string toml_scalar(ValueType type, const std::string& text) {
  switch (type) {
    case ValueType::kInteger: return std::to_string(converted<int64_t>(text));
    case ValueType::kUnsigned: return std::to_string(converted<uint64_t>(text));
    case ValueType::kNumber: return toml_float(converted<double>(text));
    default: return toml_string(text);
  }
}

// The TOML value of an option as parsed, or of its default; nullopt for an option with neither.
std::optional<std::string> toml_value(const CLI::Option& option, bool default_also) {
  const bool given = option.count() > 0;
  if (!given && !default_also) return std::nullopt;
  const ValueType type = value_type(option);
  if (type == ValueType::kFlag) return given && option.as<bool>() ? "true" : "false";
  if (!given && option.get_default_str().empty()) return std::nullopt;
  std::vector<std::string> values;
  for (const std::string& text : option.as<std::vector<std::string>>()) values.push_back(toml_scalar(type, text));
  if (values.size() == 1) return values.front();
  return fmt::format("[{}]", fmt::join(values, ", "));
}

std::string comment_lines(const std::string& text) {
  return "# " + CLI::detail::fix_newlines("# ", text) + "\n";
}

// Reads `--config FILE` for the subcommand being run: keys outside a [section] belong to it, so
// `optima prune --config sparsegpt.toml` takes the bare `method = "sparsegpt"` lines that --dump-config prints;
// `[NAME]` holds the settings of subcommand NAME, used when NAME runs and checked (not used) otherwise, so one file
// can serve several subcommands. Every key and value is checked (SettingsChecker) before any is applied.
// (CLI11 only reads a config option of the root app, so the option lives there and subcommands fall through to it.)
class SubcommandConfig : public CLI::ConfigTOML {
 public:
  explicit SubcommandConfig(CLI::App& root) : root_(root) {}

  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    const std::vector<CLI::App*> active = root_.get_subcommands();
    CLI::App* running = active.empty() ? nullptr : active.front();
    if (help_requested(running)) return {};                              // --help answers even when the file is broken
    const std::string file = root_.get_config_ptr()->as<std::string>();  // CLI11 takes at most one --config
    const std::string text{std::istreambuf_iterator<char>(input), std::istreambuf_iterator<char>()};
    return checked_items(read_toml(file, text), file, running);
  }

  std::string to_config(const CLI::App* app, bool default_also, bool write_description,
                        std::string /*prefix*/) const override {
    std::string out = write_description ? comment_lines(app->get_description()) : "";
    for (const CLI::Option* option : settings_of(*app)) {
      const std::optional<std::string> value = toml_value(*option, default_also);
      if (!value) continue;
      if (write_description && !option->get_description().empty())
        out += "\n" + comment_lines(option->get_description());
      out += fmt::format("{} = {}\n", option->get_single_name(), *value);
    }
    return out;
  }

 private:
  bool help_requested(const CLI::App* running) const {
    const auto given = [](const CLI::Option* help) { return help != nullptr && help->count() > 0; };
    return given(root_.get_help_ptr()) || (running != nullptr && given(running->get_help_ptr()));
  }

  // Checks every section, key and value, then keeps the settings of optima itself and of the running subcommand.
  std::vector<CLI::ConfigItem> checked_items(const TomlDocument& document, const std::string& file,
                                             CLI::App* running) const {
    const SettingsChecker checker(root_, file);
    for (const TomlSection& section : document.sections) checker.check_section(section.path, section.line);
    std::map<const CLI::Option*, int> line_of;
    std::vector<CLI::ConfigItem> items;
    for (const TomlEntry& entry : document.entries) {
      const SettingsChecker::Setting setting = checker.resolve(entry, running);
      if (setting.option == nullptr) continue;
      if (const auto [it, first] = line_of.emplace(setting.option, entry.line); !first)
        optima::fail_usage(
            fmt::format("{}: set twice, on lines {} and {}", key_where(file, entry), it->second, entry.line));
      checker.check_value(entry, *setting.option);
      if (setting.app == running || setting.app == &root_) items.push_back(config_item(setting, entry));
    }
    return items;
  }

  CLI::ConfigItem config_item(const SettingsChecker::Setting& setting, const TomlEntry& entry) const {
    CLI::ConfigItem item;
    if (setting.app != &root_) item.parents = {setting.app->get_name()};
    item.name = setting.option->get_single_name();
    for (const TomlScalar& value : entry.values) item.inputs.push_back(cli_text(value));
    return item;
  }

  CLI::App& root_;
};

}  // namespace

std::shared_ptr<CLI::Config> make_settings_file_format(CLI::App& root) {
  return std::make_shared<SubcommandConfig>(root);
}

}  // namespace optima::cli
