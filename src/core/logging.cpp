// stderr logging for the optima CLI and library.
#include "optima/core/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "optima/core/error.h"

namespace optima {

void configure_logging(std::string_view level) {
  const auto parsed = spdlog::level::from_str(std::string(level));
  // from_str maps unknown names to "off"; only accept "off" when asked for.
  if (parsed == spdlog::level::off && level != "off")
    fail_usage(fmt::format("unknown log level '{}' (expected trace, debug, info, warn, error or off)", level));
  auto logger = spdlog::stderr_color_mt("optima");
  logger->set_pattern("[%H:%M:%S] %^%l%$: %v");
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
}

}  // namespace optima
