// The sparsity pattern a mask selector must produce: unstructured at a sparsity, or N:M (N zeros in every group of
// M consecutive input columns of each row).
//
// Free of LibTorch, so settings can be parsed and validated before any model is loaded.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace optima {

class SparsityPattern {
 public:
  // Unstructured at 50%, the field's default setting.
  SparsityPattern() = default;

  // Usage error unless 0 < sparsity < 1.
  static SparsityPattern unstructured(double sparsity);
  // N zeros in every group of M; usage error unless 0 < n < m.
  static SparsityPattern n_m(int64_t n, int64_t m);
  // Parses "unstructured" or "N:M" ("2:4", "4:8", ...). For "unstructured" the sparsity is required; for N:M it is
  // optional and, when given, must equal N/M. Usage errors say what was expected and what was found.
  static SparsityPattern parse(std::string_view pattern, std::optional<double> sparsity);

  bool is_unstructured() const { return m_ == 0; }
  bool is_n_m() const { return m_ != 0; }
  // Zeros per group and group size; both 0 for unstructured.
  int64_t n() const { return n_; }
  int64_t m() const { return m_; }
  // The fraction of weights to zero (N/M for N:M).
  double sparsity() const { return sparsity_; }

  // "unstructured 0.5" or "2:4", for logs and reports.
  std::string to_string() const;
  // The pattern as --pattern spells it: "unstructured" or "N:M".
  std::string name() const;

  // For N:M, raises a usage error naming `where` (the layer) unless in_features is a multiple of M.
  void check_fits(int64_t in_features, std::string_view where) const;

  friend bool operator==(const SparsityPattern&, const SparsityPattern&) = default;

 private:
  SparsityPattern(int64_t n, int64_t m, double sparsity) : n_(n), m_(m), sparsity_(sparsity) {}

  int64_t n_ = 0;
  int64_t m_ = 0;
  double sparsity_ = 0.5;
};

}  // namespace optima
