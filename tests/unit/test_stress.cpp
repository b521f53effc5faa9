// Numerics under stress: Hessians that are singular or nearly so, as real calibration produces them (inputs that
// are always zero, inputs that duplicate each other, fewer calibration tokens than inputs). Every selector, each
// followed by both OPTIMA solvers, must finish with finite weights of the requested sparsity and report finite
// damping and KKT residuals; the selectors' own reference tests (test_select.cpp, test_solve.cpp) check exactness
// on such matrices one at a time, this file checks the whole chain on all of them at once.
#include <ATen/ATen.h>

#include "optima/select/selector.h"
#include "optima/solve/row_solver.h"
#include "test_util.h"

namespace optima::test {
namespace {

constexpr int64_t kIn = 64;
constexpr int64_t kOut = 24;

// X [tokens, kIn] with inputs 3, 17 and 40 always zero, input 9 a copy of input 8 and input 30 twice input 31 (a
// scaled duplicate); H = (2/tokens) XᵀX as the accumulator scales it.
at::Tensor stressed_hessian(int64_t tokens, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor x = at::randn({tokens, kIn}, at::kDouble) * at::logspace(0, 2, kIn, 10, at::kDouble);  // outliers
  x.select(1, 9).copy_(x.select(1, 8));
  x.select(1, 30).copy_(x.select(1, 31) * 2);
  for (int64_t dead : {3, 17, 40}) x.select(1, dead).zero_();
  return (x.t().mm(x) * (2.0 / static_cast<double>(tokens))).to(at::kFloat);
}

struct StressCase {
  const char* method;
  const char* pattern;
  int64_t tokens;  // < kIn: rank-deficient from too few tokens as well
};

void check_case(const StressCase& c) {
  const at::Tensor h = stressed_hessian(c.tokens, 7);
  at::manual_seed(11);
  const at::Tensor w = at::randn({kOut, kIn}) * 0.05;
  const SparsityPattern target =
      std::string(c.pattern) == "2:4" ? SparsityPattern::n_m(2, 4) : SparsityPattern::unstructured(0.5);
  const auto selector = make_selector(c.method);
  LayerStats stats;
  stats.hessian = h;
  stats.act_sq_norm = h.diagonal().clone() / 2;  // Wanda's statistic: the mean squared column norm
  const Selection selection = selector->select(w, stats, target);
  SCOPED_TRACE(::testing::Message() << c.method << " " << c.pattern << ", " << c.tokens << " tokens");
  EXPECT_TRUE(selection.weight.isfinite().all().item<bool>());
  EXPECT_TRUE(std::isfinite(selection.damping));
  EXPECT_GE(selection.damping, 0.0);
  const double wanted = target.sparsity();
  auto check_pattern = [&](const at::Tensor& written, const std::string& what) {
    const at::Tensor zeros = written == 0;
    EXPECT_GE(zeros.to(at::kDouble).mean().item<double>(), wanted - 1.0 / kIn) << what;
    if (target.is_n_m()) {
      const at::Tensor groups = zeros.reshape({kOut, -1, target.m()}).sum(-1);
      EXPECT_TRUE((groups >= target.n()).all().item<bool>()) << what;
    }
  };
  check_pattern(selection.weight.masked_fill(selection.pruned, 0), "selector");

  const RowSolveResult exact = solve_rows_exact(w, selection.pruned, h);
  const RowSolveResult cg = solve_rows_iterative(w, selection.pruned, h, selection.weight, 1e-11, 4000);
  for (const auto& [name, r] : {std::pair<const char*, const RowSolveResult&>{"exact", exact}, {"cg", cg}}) {
    EXPECT_TRUE(r.weight.isfinite().all().item<bool>()) << name;
    EXPECT_TRUE(std::isfinite(r.kkt_residual)) << name;
    EXPECT_TRUE(std::isfinite(r.damping) && r.damping > 0) << name << ": the damping used is reported";
    EXPECT_EQ(r.dead_inputs, 3) << name;
    check_pattern(r.weight, name);
    EXPECT_TRUE(r.weight.masked_select(selection.pruned).eq(0).all().item<bool>()) << name;
  }
  EXPECT_LT(exact.kkt_residual, 1e-8);
  // Both solve the same damped problem (dead inputs get a unit diagonal, then the reported damping is added). Along
  // H's near-null directions that objective is almost flat, so the weights may differ there; its values may not.
  at::Tensor damped = h.to(at::kDouble).clone();
  damped.diagonal().masked_fill_(damped.diagonal() == 0, 1.0);
  damped.diagonal().add_(exact.damping);
  auto objective = [&](const at::Tensor& v) {
    const at::Tensor d = (v - w).to(at::kDouble);
    return (d.mm(damped) * d).sum().item<double>();
  };
  const double best = objective(exact.weight);
  EXPECT_NEAR(objective(cg.weight), best, 1e-3 * best);
  EXPECT_LE(best, objective(selection.weight.masked_fill(selection.pruned, 0)) * (1 + 1e-9))
      << "the exact optimum is no worse than the selector's weights";
}

// One test rather than one per case: the cases are quick, and each test process takes a second to start.
TEST(StressedHessian, EverySelectorAndBothSolversStayFinite) {
  for (const char* method : {"magnitude", "wanda", "sparsegpt"})
    for (const char* pattern : {"unstructured", "2:4"})
      for (int64_t tokens : {int64_t{8}, int64_t{256}}) check_case({method, pattern, tokens});
}

}  // namespace
}  // namespace optima::test
