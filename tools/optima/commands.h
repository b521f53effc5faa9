// The subcommands of the optima CLI. Each file tools/optima/cmd_*.cpp adds one subcommand to the root app and
// returns the function that runs it after parsing.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace optima::cli {

struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

Command add_inspect(CLI::App& root);
Command add_make_random(CLI::App& root);
Command add_convert(CLI::App& root);
Command add_eval(CLI::App& root);
Command add_prune(CLI::App& root);
Command add_tokenize(CLI::App& root);
Command add_check(CLI::App& root);

}  // namespace optima::cli
