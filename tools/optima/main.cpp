// optima: one-shot pruning of large language models. This is the command-line front end of liboptima: it parses
// the command line and settings files, configures logging, runs one subcommand, and maps errors to exit codes.
#include <c10/util/Exception.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <exception>
#include <iterator>
#include <limits>
#include <map>
#include <numeric>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include "commands.h"
#include "optima/core/error.h"
#include "optima/core/interrupt.h"
#include "optima/core/logging.h"
#include "optima/core/resources.h"
#include "optima/core/threads.h"
#include "optima/core/version.h"
#include "optima/dist/distributed.h"
#include "settings_file.h"

namespace {

std::string version_text() {
  std::string many;  // the c10d backends a job of many processes can use
  if (optima::distributed_backend_available(c10::kCPU)) many += "gloo";
  if (optima::distributed_backend_available(c10::Device(c10::kCUDA, 0))) many += many.empty() ? "nccl" : ", nccl";
  return fmt::format("optima {} ({}), LibTorch {}, CUDA {}, many processes: {}", OPTIMA_VERSION, OPTIMA_GIT_DESCRIBE,
                     OPTIMA_TORCH_VERSION, OPTIMA_BUILT_WITH_CUDA ? "built in" : "not built",
                     many.empty() ? "not built" : many);
}

// OpenMP's wait policy must be in the environment before libgomp (loaded with LibTorch) initialises, which is
// before main(): the executable's .preinit_array runs before every shared library's initialisers (core/threads.h).
void set_wait_policy_before_libraries(int /*argc*/, char** argv, char** envp) {
  optima::reexec_with_passive_openmp_wait(argv, envp);
}
__attribute__((section(".preinit_array"),
               used)) void (*const preinit_wait_policy)(int, char**, char**) = &set_wait_policy_before_libraries;

// Subcommands that compute with LibTorch take --threads (and `threads` in a settings file).
void add_threads_option(CLI::App& app, int& threads) {
  for (const char* name : {"prune", "eval", "inspect", "convert", "make-random"})
    app.get_subcommand(name)
        ->add_option("--threads", threads,
                     "Threads to compute with (0: the CPUs this process may use: its affinity mask, cgroup CPU quota "
                     "and SLURM_CPUS_PER_TASK, unless OMP_NUM_THREADS is set)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
}

// Prints "optima: <kind>: <message>" and returns the kind's exit code.
int report(const optima::Error& error) {
  std::fprintf(stderr, "optima: %s: %s\n", std::string(optima::to_string(error.kind())).c_str(), error.what());
  return optima::exit_code_for(error.kind());
}

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
  app.config_formatter(optima::cli::make_settings_file_format(app));

  std::vector<optima::cli::Command> commands;
  commands.push_back(optima::cli::add_inspect(app));
  commands.push_back(optima::cli::add_prune(app));
  commands.push_back(optima::cli::add_eval(app));
  commands.push_back(optima::cli::add_tokenize(app));
  commands.push_back(optima::cli::add_convert(app));
  commands.push_back(optima::cli::add_make_random(app));
  commands.push_back(optima::cli::add_check(app));
  int threads = 0;
  add_threads_option(app, threads);

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
  } catch (const optima::Error& e) {  // a --config file with an unknown key or a value of the wrong type
    return report(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "optima: %s\nRun 'optima --help' for usage.\n", e.what());
    return optima::kExitUsage;
  }

  try {
    optima::configure_logging(log_level);
    optima::install_interrupt_handlers();
    for (const auto& command : commands) {
      if (!command.app->parsed()) continue;
      if (command.app->get_option_no_throw("--threads") != nullptr)
        optima::apply_threads(optima::choose_threads(optima::read_thread_sources(), threads));
      return command.run();
    }
    return optima::kExitUsage;
  } catch (const optima::Error& e) {
    return report(e);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "optima: internal error in LibTorch: %s\n", e.what_without_backtrace());
    return optima::kExitInternal;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "optima: internal error: %s\n", e.what());
    return optima::kExitInternal;
  }
}
