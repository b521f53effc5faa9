// Settings files: `--config FILE.toml` read for the subcommand being run, every key and value checked against its
// options as strictly as the command line checks them (an unknown or misplaced key, or a value of the wrong type, is
// a usage error naming the file, the key and the nearest valid key), and `--dump-config` written so that reading it
// back gives the same settings.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>

namespace optima::cli {

// The config formatter of the root app `root` (CLI11 reads a config option of the root app only; subcommands fall
// through to it).
std::shared_ptr<CLI::Config> make_settings_file_format(CLI::App& root);

}  // namespace optima::cli
