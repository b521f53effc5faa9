// optima: one-shot pruning of large language models. This is the command-line front end of liboptima: it parses
// the command line, configures logging, runs one subcommand, and maps errors to exit codes.
#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <exception>
#include <vector>

#include "commands.h"
#include "optima/core/error.h"
#include "optima/core/interrupt.h"
#include "optima/core/logging.h"
#include "optima/core/resources.h"
#include "optima/core/version.h"
#include "optima/dist/distributed.h"

namespace {

std::string version_text() {
  std::string many;  // the c10d backends a job of many processes can use
  if (optima::distributed_backend_available(c10::kCPU)) many += "gloo";
  if (optima::distributed_backend_available(c10::Device(c10::kCUDA, 0))) many += many.empty() ? "nccl" : ", nccl";
  return fmt::format("optima {} ({}), LibTorch {}, CUDA {}, many processes: {}", OPTIMA_VERSION, OPTIMA_GIT_DESCRIBE,
                     OPTIMA_TORCH_VERSION, OPTIMA_BUILT_WITH_CUDA ? "built in" : "not built",
                     many.empty() ? "not built" : many);
}

// Reads `--config FILE` (TOML) for the subcommand being run: keys outside a [section] belong to that subcommand, so
// `optima prune --config sparsegpt.toml` takes the bare `method = "sparsegpt"` lines that --dump-config prints.
// (CLI11 only reads a config option of the root app, so the option lives there and subcommands fall through to it.)
class SubcommandConfig : public CLI::ConfigTOML {
 public:
  explicit SubcommandConfig(const CLI::App& root) : root_(root) {}

  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    std::vector<CLI::ConfigItem> items = CLI::ConfigTOML::from_config(input);
    const std::vector<CLI::App*> active = root_.get_subcommands();
    if (active.empty()) return items;
    for (CLI::ConfigItem& item : items)
      if (item.parents.empty() && item.name != "++" && item.name != "--" &&
          root_.get_option_no_throw("--" + item.name) == nullptr)
        item.parents = {active.front()->get_name()};
    return items;
  }

 private:
  const CLI::App& root_;
};

}  // namespace

int main(int argc, char** argv) {
  optima::tune_allocator();
  CLI::App app{"optima: one-shot pruning of large language models with exact OPTIMA reconstruction", "optima"};
  app.set_version_flag("--version", version_text());
  app.require_subcommand(1);
  app.fallthrough();
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")->capture_default_str();
  app.set_config("--config", "", "Read the subcommand's settings from a TOML file (command-line flags win)");
  app.config_formatter(std::make_shared<SubcommandConfig>(app));

  std::vector<optima::cli::Command> commands;
  commands.push_back(optima::cli::add_inspect(app));
  commands.push_back(optima::cli::add_prune(app));
  commands.push_back(optima::cli::add_eval(app));
  commands.push_back(optima::cli::add_tokenize(app));
  commands.push_back(optima::cli::add_convert(app));
  commands.push_back(optima::cli::add_make_random(app));

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::FileError& e) {  // a --config file that cannot be read
    std::fprintf(stderr, "optima: %s: %s\n", std::string(optima::to_string(optima::ErrorKind::kInput)).c_str(),
                 e.what());
    return optima::exit_code_for(optima::ErrorKind::kInput);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "optima: %s\nRun 'optima --help' for usage.\n", e.what());
    return optima::kExitUsage;
  }

  try {
    optima::configure_logging(log_level);
    optima::install_interrupt_handlers();
    for (const auto& command : commands)
      if (command.app->parsed()) return command.run();
    return optima::kExitUsage;
  } catch (const optima::Error& e) {
    std::fprintf(stderr, "optima: %s: %s\n", std::string(optima::to_string(e.kind())).c_str(), e.what());
    return optima::exit_code_for(e.kind());
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "optima: internal error in LibTorch: %s\n", e.what_without_backtrace());
    return optima::kExitInternal;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "optima: internal error: %s\n", e.what());
    return optima::kExitInternal;
  }
}
