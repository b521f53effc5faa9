// Unit tests of the pruning run's pieces that work without files or models: the layer step (select, reconstruct,
// measure), the pattern check, mask packing, the report's and the saved state's JSON forms, and the typed settings'
// names.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <string>

#include "optima/core/finite.h"
#include "optima/model/arch.h"
#include "optima/prune/block_runner.h"
#include "optima/prune/layer_step.h"
#include "optima/prune/output.h"
#include "optima/prune/plan.h"
#include "optima/prune/report.h"
#include "optima/prune/resume.h"
#include "optima/stats/accumulator.h"
#include "test_util.h"

namespace optima {
namespace {

using test::expect_error;
using test::fresh_seed;
using test::seed_note;

// Calibration-like inputs X [tokens, in] with correlated features of unequal scale, and H = (2/n) XᵀX.
struct LayerInputs {
  at::Tensor x;  // fp64
  at::Tensor hessian;
  at::Tensor weight;  // fp32 [out, in]
};

LayerInputs random_layer(uint64_t seed, int64_t out, int64_t in, int64_t tokens) {
  at::manual_seed(seed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor mixing = at::randn({in, in}, f64) / std::sqrt(static_cast<double>(in)) + at::eye(in, f64);
  const at::Tensor scales = at::exp(at::randn({in}, f64));
  LayerInputs l;
  l.x = at::randn({tokens, in}, f64).mm(mixing) * scales;
  l.hessian = (l.x.t().mm(l.x) * (2.0 / static_cast<double>(tokens))).to(at::kFloat);
  l.weight = at::randn({out, in}) * 0.05;
  return l;
}

// ||(W - V) X||² / ||W X||² straight from the inputs X, in fp64: independent of H and of relative_error.
double error_from_inputs(const at::Tensor& x, const at::Tensor& dense, const at::Tensor& written) {
  const at::Tensor w = dense.to(at::kDouble);
  const at::Tensor d = w - written.to(at::kDouble);
  return x.mm(d.t()).square().sum().item<double>() / x.mm(w.t()).square().sum().item<double>();
}

PrunePlan plan_for(const std::string& method, Reconstruct reconstruct) {
  PrunePlan plan;
  plan.method = method;
  plan.reconstruct = reconstruct;
  plan.qp_precision = SolvePrecision::kFloat64;
  return plan;
}

TEST(LayerStepTest, MeasuresWhatItWritesAgainstTheInputs) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const LayerInputs in = random_layer(seed, 24, 64, 512);
  for (const char* method : {"magnitude", "wanda", "sparsegpt"})
    for (const SparsityPattern& target : {SparsityPattern::unstructured(0.6), SparsityPattern::n_m(2, 4)}) {
      SCOPED_TRACE(std::string(method) + " " + target.to_string());
      const LayerPruner pruner(plan_for(method, Reconstruct::kNone), Distributed::single_process());
      LayerStats stats{in.hessian, in.hessian.diagonal() / 2};
      LayerReport report;
      report.name = "layers.0.fc1";
      const LayerResult r = pruner.prune(in.weight, stats, target, report);
      EXPECT_EQ(r.weight.scalar_type(), at::kFloat);
      EXPECT_TRUE(at::equal(r.weight.masked_select(r.pruned), at::zeros({r.pruned.sum().item<int64_t>()})));
      const double zeros = (r.weight == 0).to(at::kDouble).mean().item<double>();
      EXPECT_DOUBLE_EQ(report.sparsity, zeros);
      EXPECT_NEAR(report.sparsity, target.sparsity(), 2.0 / 64);
      EXPECT_TRUE(report.pattern_ok);
      // fp32 H against fp64 X: a few ulps of fp32 relative.
      const double expected = error_from_inputs(in.x, in.weight, r.weight);
      EXPECT_NEAR(report.error_final, expected, 1e-4 * expected);
      EXPECT_DOUBLE_EQ(report.error_selector, report.error_final);  // nothing reconstructed
      EXPECT_FALSE(report.reconstructed());
    }
}

// OPTIMA keeps the selector's mask and can only lower the error: it is the optimum over that mask, which the
// selector's weights also respect. Its KKT residual is small and its error matches the inputs' measure.
TEST(LayerStepTest, ReconstructionKeepsTheMaskAndLowersTheError) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const LayerInputs in = random_layer(seed, 16, 48, 400);
  for (const char* method : {"magnitude", "sparsegpt"}) {
    SCOPED_TRACE(method);
    const LayerPruner plain(plan_for(method, Reconstruct::kNone), Distributed::single_process());
    const LayerPruner optima(plan_for(method, Reconstruct::kOptima), Distributed::single_process());
    const LayerStats stats{in.hessian, {}};
    LayerReport before, after;
    const LayerResult selected = plain.prune(in.weight, stats, SparsityPattern::unstructured(0.5), before);
    const LayerResult reconstructed = optima.prune(in.weight, stats, SparsityPattern::unstructured(0.5), after);
    EXPECT_TRUE(at::equal(selected.pruned, reconstructed.pruned));
    EXPECT_TRUE(after.reconstructed());
    EXPECT_LT(after.kkt_residual, 1e-6);
    EXPECT_DOUBLE_EQ(after.error_selector, before.error_final);
    EXPECT_LE(after.error_final, before.error_final * (1 + 1e-6));
    const double expected = error_from_inputs(in.x, in.weight, reconstructed.weight);
    EXPECT_NEAR(after.error_final, expected, 1e-4 * expected);
  }
}

TEST(LayerStepTest, ErrorsNameTheLayer) {
  const LayerPruner pruner(plan_for("sparsegpt", Reconstruct::kNone), Distributed::single_process());
  LayerReport report;
  report.name = "model.layers.7.mlp.up_proj";
  expect_error(
      [&] {
        pruner.prune(at::randn({4, 8}), LayerStats{}, SparsityPattern(), report);
      },
      ErrorKind::kInternal, {"model.layers.7.mlp.up_proj", "Hessian"});
}

// --batch-size 0: the windows that 256 MiB holds for one block's pass, spread evenly; an explicit size as given.
TEST(BatchSizeTest, FromTheMemoryBudget) {
  ModelShape small;  // stories260k: hidden 64, MLP 172, 8 heads
  small.hidden_size = 64;
  small.intermediate_size = 172;
  small.num_heads = 8;
  // Per window 4 · (256 · (5·64 + 3·172) + 8 · 256²) = 2953216 bytes: 90 fit, so 128 windows take 2 batches of 64.
  EXPECT_EQ(forward_batch_size(0, small, 256, 128, at::kFloat), 64);
  EXPECT_EQ(forward_batch_size(0, small, 256, 90, at::kFloat), 90);
  EXPECT_EQ(forward_batch_size(0, small, 256, 91, at::kFloat), 46);
  EXPECT_EQ(forward_batch_size(0, small, 256, 5, at::kFloat), 5);
  EXPECT_EQ(forward_batch_size(0, small, 256, 0, at::kFloat), 1);
  EXPECT_EQ(forward_batch_size(0, small, 256, 128, at::kBFloat16), 128);  // half the bytes: 181 fit
  EXPECT_EQ(forward_batch_size(0, small, 256, 182, at::kBFloat16), 91);
  EXPECT_EQ(forward_batch_size(3, small, 256, 128, at::kFloat), 3);
  ModelShape big;  // LLaMA-7B at 2048 tokens: one window alone is past the budget
  big.hidden_size = 4096;
  big.intermediate_size = 11008;
  big.num_heads = 32;
  EXPECT_EQ(forward_batch_size(0, big, 2048, 128, at::kFloat), 1);
}

// A batch of samples gives the statistics of the same samples added one at a time, to the bit, and their running
// means agree with a float64 sum computed here.
TEST(StatisticsTest, BatchesAddSampleBySample) {
  const uint64_t seed = fresh_seed();
  at::manual_seed(seed);
  const at::Tensor x = at::randn({5, 7, 12}) * 3;
  InputStatistics batched(12, c10::kCPU, true, true), single(12, c10::kCPU, true, true);
  batched.add(x.slice(0, 0, 3));
  batched.add(x.slice(0, 3, 5));
  for (int64_t s = 0; s < 5; ++s) single.add(x.slice(0, s, s + 1));
  EXPECT_TRUE(at::equal(batched.hessian(), single.hessian())) << seed_note(seed);
  EXPECT_TRUE(at::equal(batched.column_sq_norms(), single.column_sq_norms())) << seed_note(seed);
  EXPECT_EQ(batched.samples(), 5);
  EXPECT_EQ(batched.tokens(), 35);
  const at::Tensor rows = x.reshape({-1, 12}).to(at::kDouble);
  const at::Tensor h = rows.t().mm(rows) * (2.0 / 5.0);
  EXPECT_LT((batched.hessian().to(at::kDouble) - h).abs().max().item<double>(), 1e-4 * h.abs().max().item<double>())
      << seed_note(seed);
  const at::Tensor norms = rows.pow(2).sum(0) / 5.0;
  EXPECT_LT((batched.column_sq_norms().to(at::kDouble) - norms).abs().max().item<double>(),
            1e-5 * norms.abs().max().item<double>())
      << seed_note(seed);
}

TEST(PatternCheckTest, FailsWhenAGroupHasTooFewZeros) {
  at::Tensor zeros = at::zeros({2, 8}, at::kBool);
  zeros.index_put_({0, at::indexing::Slice(0, 2)}, true);
  zeros.index_put_({0, at::indexing::Slice(4, 6)}, true);
  zeros.index_put_({1, at::indexing::Slice(2, 4)}, true);
  zeros.index_put_({1, at::indexing::Slice(6, 8)}, true);
  EXPECT_TRUE(pattern_holds(zeros, SparsityPattern::n_m(2, 4)));
  EXPECT_FALSE(pattern_holds(zeros, SparsityPattern::n_m(3, 4)));
  zeros.index_put_({1, 7}, false);  // the last group of row 1 keeps one zero only
  EXPECT_FALSE(pattern_holds(zeros, SparsityPattern::n_m(2, 4)));
  EXPECT_TRUE(pattern_holds(zeros, SparsityPattern::n_m(1, 4)));
}

TEST(MaskPackingTest, EightColumnsPerByteLeastSignificantFirst) {
  at::Tensor pruned = at::zeros({2, 11}, at::kBool);
  pruned.index_put_({0, 0}, true);
  pruned.index_put_({0, 7}, true);
  pruned.index_put_({0, 8}, true);
  pruned.index_put_({1, 10}, true);
  const at::Tensor packed = pack_mask(pruned);
  ASSERT_EQ(packed.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(packed.scalar_type(), at::kByte);
  EXPECT_EQ(packed[0][0].item<int64_t>(), 1 + 128);
  EXPECT_EQ(packed[0][1].item<int64_t>(), 1);
  EXPECT_EQ(packed[1][0].item<int64_t>(), 0);
  EXPECT_EQ(packed[1][1].item<int64_t>(), 4);
}

LayerReport sample_layer(bool reconstructed) {
  LayerReport l;
  l.name = "model.layers.1.self_attn.q_proj";
  l.block = 1;
  l.site = "attn_in";
  l.shape = {64, 32};
  l.sparsity = 0.5078125;
  l.pattern_ok = false;
  l.error_selector = 0.125;
  l.error_final = 0.0625;
  l.damping = 0.03;
  l.damping_retries = 2;
  l.seconds_select = 1.5;
  if (reconstructed) {
    l.kkt_residual = 3e-9;
    l.reconstruct_damping = 1e-6;
    l.qp_iterations = 7;
    l.qp_fp64_fallback_rows = 3;
    l.qp_chunks = 2;
    l.qp_converged = false;
    l.seconds_reconstruct = 2.5;
  }
  return l;
}

TEST(ReportTest, LayerRowsRoundTripThroughJson) {
  for (bool reconstructed : {false, true}) {
    const LayerReport l = sample_layer(reconstructed);
    const nlohmann::json j = l.to_json();
    EXPECT_EQ(j.contains("kkt_residual"), reconstructed);
    EXPECT_EQ(j.at("input"), "attn_in");
    const LayerReport back = LayerReport::from_json(j);
    EXPECT_EQ(back.to_json(), j);
    EXPECT_EQ(back.qp_converged, !reconstructed);
    EXPECT_EQ(back.kkt_residual, reconstructed ? 3e-9 : -1);
  }
}

TEST(ReportTest, TotalsAndTable) {
  PruneReport report;
  report.layers = {sample_layer(true), sample_layer(true)};
  report.layers[1].name = "model.layers.1.self_attn.k_proj";
  report.layers[1].shape = {16, 32};
  report.layers[1].sparsity = 0.25;
  report.layers[1].pattern_ok = true;
  report.total_sparsity();
  // 0.5078125 of 2048 = 1040 zeros, 0.25 of 512 = 128 zeros.
  EXPECT_DOUBLE_EQ(report.overall_sparsity, (1040.0 + 128.0) / 2560.0);
  const std::string table = report.summary();
  EXPECT_NE(table.find("model.layers.1.self_attn.q_proj"), std::string::npos);
  EXPECT_NE(table.find("BROKEN"), std::string::npos);  // q_proj's pattern check failed
  EXPECT_NE(table.find("err(final)"), std::string::npos);
  EXPECT_EQ(report.to_json().at("layers").size(), 2u);
}

TEST(RunStateTest, RoundTripsThroughJson) {
  RunState s;
  s.fingerprint = {{"settings", "ab"}, {"model", "cd"}};
  s.next_block = 3;
  s.writer = nlohmann::json{{"shards", nlohmann::json::array()}};
  s.activations = {"activations-block-0003.safetensors"};
  s.masks = "masks-block-0003.safetensors";
  s.layers = {sample_layer(false), sample_layer(true)};
  s.timings.total = 9;
  s.timings.forward = 1;
  s.timings.select = 2;
  s.timings.reconstruct = 3;
  s.timings.write = 4;
  s.files = {{"masks-block-0003.safetensors", {{"bytes", 10}, {"sha256", "00"}}}};
  const nlohmann::json j = s.to_json();
  EXPECT_EQ(j.at("format"), "optima-resume");
  EXPECT_TRUE(j.at("activations").is_string());  // one process: a name, as states always wrote it
  EXPECT_EQ(RunState::from_json(j, "state.json").to_json(), j);
  s.activations = {"a.rank-0", "a.rank-1"};
  s.writer.reset();
  s.masks.reset();
  const nlohmann::json many = s.to_json();
  EXPECT_TRUE(many.at("activations").is_array());
  EXPECT_FALSE(many.contains("writer"));
  EXPECT_EQ(RunState::from_json(many, "state.json").to_json(), many);
  nlohmann::json broken = j;
  broken.erase("next_block");
  expect_error([&] { RunState::from_json(broken, "/work/out.resume/state.json"); }, ErrorKind::kInput,
               {"/work/out.resume/state.json", "next_block"});
}

template <typename Enum, size_t N>
void expect_names_round_trip(const EnumName<Enum> (&names)[N], Enum (*parse)(std::string_view)) {
  for (const EnumName<Enum>& n : names) {
    EXPECT_EQ(parse(n.name), n.value) << n.name;
    if (!n.alias) {
      EXPECT_EQ(to_string(n.value), n.name);
    }
  }
}

TEST(SettingsTest, EveryNameParsesAndPrints) {
  expect_names_round_trip(kPropagationNames, parse_propagation);
  expect_names_round_trip(kReconstructNames, parse_reconstruct);
  expect_names_round_trip(kQpSolverNames, parse_qp_solver);
  expect_names_round_trip(kQpPrecisionNames, parse_qp_precision);
  expect_names_round_trip(kStatsDtypeNames, parse_stats_dtype);
  EXPECT_EQ(parse_propagation("sequential"), Propagation::kTrueSequential);  // an alias, never printed
  EXPECT_EQ(to_string(Propagation::kTrueSequential), "true-sequential");
  expect_error([] { parse_reconstruct("obs"); }, ErrorKind::kUsage,
               {"unknown --reconstruct 'obs'", "expected none or optima"});
  expect_error([] { parse_qp_precision("fp16"); }, ErrorKind::kUsage, {"--qp-precision", "expected fp64 or fp32"});
  expect_error([] { parse_propagation("sideways"); }, ErrorKind::kUsage,
               {"propagation mode", "expected reference or true-sequential"});
}

TEST(SettingsTest, PlanJsonSpellsSettingsAsTheCommandLine) {
  PrunePlan plan = plan_for("wanda", Reconstruct::kOptima);
  plan.qp_solver = QpSolver::kIterative;
  plan.hessian_dtype = StatsDtype::kFloat64;
  plan.propagation = Propagation::kTrueSequential;
  const nlohmann::json j = plan.to_json();
  EXPECT_EQ(j.at("method"), "wanda");
  EXPECT_EQ(j.at("reconstruct"), "optima");
  EXPECT_EQ(j.at("qp_solver"), "iterative");
  EXPECT_EQ(j.at("qp_precision"), "fp64");
  EXPECT_EQ(j.at("hessian_dtype"), "fp64");
  EXPECT_EQ(j.at("propagation"), "true-sequential");
}

// all_finite's one-pass sum must not hide a NaN or an Inf anywhere, nor call finite values non-finite when their sum
// overflows; the elementwise test is the reference.
TEST(AllFinite, AgreesWithTheElementwiseTest) {
  for (const at::ScalarType type : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    at::Tensor t = at::randn({37, 11}).to(type);
    EXPECT_TRUE(all_finite(t));
    for (const double bad : {std::nan(""), double{INFINITY}, -double{INFINITY}}) {
      at::Tensor spoiled = t.clone();
      spoiled.view(-1)[std::rand() % t.numel()] = bad;
      EXPECT_FALSE(all_finite(spoiled)) << c10::toString(type) << " " << bad;
      EXPECT_EQ(all_finite(spoiled), at::isfinite(spoiled).all().item<bool>());
    }
  }
  EXPECT_TRUE(all_finite(at::full({4}, 1e308, at::kDouble)));  // the sum overflows, the values do not
  EXPECT_TRUE(all_finite(at::full({4}, 60000.0, at::kHalf)));
  EXPECT_TRUE(all_finite(at::empty({0})));
  EXPECT_TRUE(all_finite(at::ones({3}, at::kLong)));
}

}  // namespace
}  // namespace optima
