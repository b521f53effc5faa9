// Logging set-up. Library code logs through spdlog's default logger; the CLI decides where it goes (stderr) and
// how much is shown (--log-level).
#pragma once

#include <spdlog/spdlog.h>

#include <string_view>

namespace optima {

// Routes the default logger to stderr with a compact pattern; `level` is trace|debug|info|warn|error|off.
// An unknown level is a usage error.
void configure_logging(std::string_view level);

}  // namespace optima
