// Parsing and validation of sparsity patterns ("unstructured" at a sparsity, "N:M").
#include "optima/select/pattern.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>

#include "optima/core/error.h"

namespace optima {
namespace {

// Parses a whole string as a decimal integer; nullopt on anything else (signs other than '-', spaces, suffixes).
std::optional<int64_t> parse_int(std::string_view text) {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end) return std::nullopt;
  return value;
}

}  // namespace

SparsityPattern SparsityPattern::unstructured(double sparsity) {
  // Written so that NaN fails too.
  if (!(sparsity > 0.0 && sparsity < 1.0))
    fail_usage(
        fmt::format("sparsity must lie strictly between 0 and 1 (expected 0 < sparsity < 1, found {})", sparsity));
  return SparsityPattern(0, 0, sparsity);
}

SparsityPattern SparsityPattern::n_m(int64_t n, int64_t m) {
  if (m <= 0)
    fail_usage(
        fmt::format("N:M pattern {}:{}: the group size M must be positive (expected M >= 2, found {})", n, m, m));
  if (n <= 0 || n >= m)
    fail_usage(fmt::format("N:M pattern {}:{}: N zeros per group of M needs 0 < N < M (expected N in 1..{}, found {})",
                           n, m, m - 1, n));
  return SparsityPattern(n, m, static_cast<double>(n) / static_cast<double>(m));
}

SparsityPattern SparsityPattern::parse(std::string_view pattern, std::optional<double> sparsity) {
  if (pattern == "unstructured") {
    if (!sparsity)
      fail_usage("the unstructured pattern needs a sparsity (expected a value between 0 and 1, found none)");
    return unstructured(*sparsity);
  }
  const size_t colon = pattern.find(':');
  const std::optional<int64_t> n = colon == std::string_view::npos ? std::nullopt : parse_int(pattern.substr(0, colon));
  const std::optional<int64_t> m =
      colon == std::string_view::npos ? std::nullopt : parse_int(pattern.substr(colon + 1));
  if (!n || !m)
    fail_usage(
        fmt::format("unknown sparsity pattern '{}' (expected 'unstructured' or N:M such as '2:4' or '4:8')", pattern));
  SparsityPattern result = n_m(*n, *m);
  // N/M is exact for the small integers used here; the slack only forgives a sparsity typed as a rounded decimal.
  if (sparsity && !(std::abs(*sparsity - result.sparsity_) <= 1e-9))
    fail_usage(
        fmt::format("pattern {} zeros {} of every {} weights, which contradicts the sparsity given "
                    "(expected {} or no sparsity, found {})",
                    pattern, *n, *m, result.sparsity_, *sparsity));
  return result;
}

std::string SparsityPattern::name() const {
  return is_unstructured() ? "unstructured" : fmt::format("{}:{}", n_, m_);
}

std::string SparsityPattern::to_string() const {
  if (is_n_m()) return fmt::format("{}:{}", n_, m_);
  return fmt::format("unstructured {}", sparsity_);
}

void SparsityPattern::check_fits(int64_t in_features, std::string_view where) const {
  if (is_n_m() && in_features % m_ != 0)
    fail(ErrorKind::kUsage, where,
         fmt::format("the {} pattern needs the input size to be a multiple of {}", to_string(), m_),
         fmt::format("in_features divisible by {}", m_), std::to_string(in_features));
}

}  // namespace optima
