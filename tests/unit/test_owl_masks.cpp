// OWL's per-block sparsities against a float64 oracle written here from algorithms.md §11, and the masks selector
// (--method masks) on both kinds of mask file, with the data errors it must refuse; plus the settings' checks.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "optima/io/safetensors.h"
#include "optima/io/tensor.h"
#include "optima/prune/allocation.h"
#include "optima/prune/output.h"
#include "optima/prune/plan.h"
#include "optima/select/selector.h"
#include "test_util.h"

namespace optima {
namespace {

using test::expect_error;
using test::fresh_seed;
using test::seed_note;
using test::TempDir;
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------------------------
// OWL oracle (§11), on plain vectors.

struct OracleLinear {
  int64_t out = 0, in = 0;
  std::vector<float> w;     // row-major [out, in]
  std::vector<float> stat;  // [in]
};
using OracleBlock = std::vector<OracleLinear>;

struct OracleRatio {
  int64_t count = 0;  // entries strictly above M·μ
  int64_t numel = 0;  // N_ℓ
  int64_t near = 0;   // entries within 1e-5 (relative) of M·μ: fp32 rounding of μ may move them across
  double ratio = 0;   // D_ℓ, percent
};

// Step 1: scores |w|·sqrt(stat) in fp32 (each an exactly rounded product, as ATen's), the mean in double.
OracleRatio oracle_ratio(const OracleBlock& block, double threshold) {
  std::vector<float> scores;
  for (const OracleLinear& l : block)
    for (int64_t r = 0; r < l.out; ++r)
      for (int64_t c = 0; c < l.in; ++c)
        scores.push_back(std::fabs(l.w[static_cast<size_t>(r * l.in + c)]) * std::sqrt(l.stat[static_cast<size_t>(c)]));
  double sum = 0;
  for (float v : scores) sum += v;
  const double limit = sum / static_cast<double>(scores.size()) * threshold;
  OracleRatio r;
  r.numel = static_cast<int64_t>(scores.size());
  for (float v : scores) {
    r.count += v > limit ? 1 : 0;
    r.near += std::fabs(v - limit) <= 1e-5 * limit ? 1 : 0;
  }
  r.ratio = static_cast<double>(r.count) / static_cast<double>(r.numel) * 100.0;
  return r;
}

// Steps 2-4 in double.
std::vector<double> oracle_sparsities(const std::vector<double>& d, double s, double lambda) {
  const double lo = *std::min_element(d.begin(), d.end()), hi = *std::max_element(d.begin(), d.end());
  if (lo == hi) return std::vector<double>(d.size(), s);
  std::vector<double> scaled;
  for (double v : d) scaled.push_back((v - lo) * ((1.0 / (hi - lo)) * lambda * 2));
  double mean = 0;
  for (double v : scaled) mean += v;
  mean /= static_cast<double>(scaled.size());
  std::vector<double> out;
  for (double v : scaled) {
    const double x = 1.0 - ((v - mean) + (1.0 - s));
    out.push_back(x <= 0 ? 0.01 : x);
  }
  return out;
}

// A LLaMA-shaped block of random weights with heavy-tailed columns (outliers whose share varies by block) and
// log-normal statistics; q/k/v/gate/up share one statistic per input site, as in a model.
OracleBlock random_block(std::mt19937_64& rng, int64_t hidden, int64_t inter) {
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> tail(0.0f, 3.0f);
  const float outlier_scale = 1.0f + tail(rng) * tail(rng);
  auto stat = [&](int64_t n) {
    std::vector<float> s(static_cast<size_t>(n));
    for (float& v : s) v = std::exp(1.5f * normal(rng));
    return s;
  };
  auto weight = [&](int64_t out, int64_t in) {
    std::vector<float> w(static_cast<size_t>(out * in));
    for (float& v : w) v = normal(rng) * (normal(rng) > 2.0f ? outlier_scale : 1.0f);
    return w;
  };
  const std::vector<float> attn = stat(hidden), o = stat(hidden), mlp = stat(hidden), down = stat(inter);
  OracleBlock b;
  for (int i = 0; i < 3; ++i) b.push_back({hidden, hidden, weight(hidden, hidden), attn});
  b.push_back({hidden, hidden, weight(hidden, hidden), o});
  for (int i = 0; i < 2; ++i) b.push_back({inter, hidden, weight(inter, hidden), mlp});
  b.push_back({hidden, inter, weight(hidden, inter), down});
  return b;
}

std::vector<std::pair<at::Tensor, at::Tensor>> as_tensors(const OracleBlock& block) {
  std::vector<std::pair<at::Tensor, at::Tensor>> out;
  for (const OracleLinear& l : block)
    out.emplace_back(at::tensor(l.w, at::kFloat).view({l.out, l.in}), at::tensor(l.stat, at::kFloat));
  return out;
}

TEST(OwlTest, RatiosAndSparsitiesMatchTheOracle) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const int64_t blocks = 8;
  std::vector<OracleBlock> model;
  for (int64_t b = 0; b < blocks; ++b) model.push_back(random_block(rng, 32, 80));
  for (const double threshold : {3.0, 5.0, 7.0}) {
    std::vector<double> ours, oracle;
    for (const OracleBlock& block : model) {
      const OracleRatio r = oracle_ratio(block, threshold);
      const double d = outlier_ratio(as_tensors(block), threshold);
      const auto count = static_cast<int64_t>(std::llround(d * static_cast<double>(r.numel) / 100.0));
      EXPECT_LE(std::llabs(count - r.count), r.near) << "threshold " << threshold;  // equal unless borderline
      EXPECT_EQ(d, static_cast<double>(count) / static_cast<double>(r.numel) * 100.0);
      ours.push_back(d);
      oracle.push_back(r.ratio);
    }
    ASSERT_GT(*std::max_element(oracle.begin(), oracle.end()), *std::min_element(oracle.begin(), oracle.end()));
    for (const double s : {0.5, 0.6, 0.7})
      for (const double lambda : {0.0, 0.08, 0.2}) {
        if (s + 2 * lambda >= 1) continue;
        SCOPED_TRACE(fmt::format("M {} s {} lambda {}", threshold, s, lambda));
        // From the same ratios, the arithmetic must agree to round-off.
        const std::vector<double> got = owl_sparsities(oracle, s, lambda);
        const std::vector<double> want = oracle_sparsities(oracle, s, lambda);
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << "block " << i;
        const bool clamped = std::any_of(want.begin(), want.end(), [](double v) { return v == 0.01; });
        if (clamped) continue;
        const double mean = std::accumulate(got.begin(), got.end(), 0.0) / static_cast<double>(got.size());
        EXPECT_NEAR(mean, s, 1e-12);
        const auto [lo, hi] = std::minmax_element(got.begin(), got.end());
        EXPECT_NEAR(*hi - *lo, 2 * lambda, 1e-12);
        // More outliers, lower sparsity.
        for (size_t i = 0; i < got.size(); ++i)
          for (size_t j = 0; j < got.size(); ++j)
            if (lambda > 0 && oracle[i] > oracle[j]) {
              EXPECT_LT(got[i], got[j]);
            }
      }
  }
}

TEST(OwlTest, EqualRatiosGiveTheTargetEverywhere) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const OracleBlock block = random_block(rng, 16, 40);
  const double d = outlier_ratio(as_tensors(block), 5.0);
  // The same block four times: equal ratios, where the reference divides by zero.
  EXPECT_EQ(owl_sparsities({d, d, d, d}, 0.7, 0.08), std::vector<double>(4, 0.7));
  EXPECT_EQ(owl_sparsities({0.0}, 0.5, 0.2), std::vector<double>(1, 0.5));
}

TEST(OwlTest, NonPositiveSparsitiesAreClamped) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 10.0);
  std::vector<double> d(12);
  for (double& v : d) v = u(rng);
  // Target 0.1 spread over 2·0.3: the blocks with the most outliers fall below 0 and get 0.01.
  const std::vector<double> got = owl_sparsities(d, 0.1, 0.3);
  const std::vector<double> want = oracle_sparsities(d, 0.1, 0.3);
  int clamped = 0;
  for (size_t i = 0; i < d.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 1e-12) << "block " << i;
    clamped += got[i] == kOwlSparsityFloor ? 1 : 0;
    EXPECT_GT(got[i], 0.0);
  }
  EXPECT_GE(clamped, 1);
}

TEST(OwlTest, AllocationJsonRoundTripsExactly) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 10.0);
  BlockAllocation a;
  for (int i = 0; i < 6; ++i) a.outlier_ratio.push_back(u(rng));
  a.sparsity = owl_sparsities(a.outlier_ratio, 0.7, 0.08);
  PrunePlan plan;
  plan.allocation = SparsityAllocation::kOwl;
  plan.pattern = SparsityPattern::unstructured(0.7);
  const BlockAllocation back = BlockAllocation::from_json(nlohmann::json::parse(a.to_json(plan).dump()));
  EXPECT_EQ(back.sparsity, a.sparsity);  // bit for bit: a resumed run prunes with the same numbers
  EXPECT_EQ(back.outlier_ratio, a.outlier_ratio);
}

TEST(OwlTest, SettingsAreChecked) {
  PrunePlan plan;
  plan.model = "m";
  plan.out = "o";
  plan.calib = "c.txt";
  plan.method = "wanda";
  plan.allocation = SparsityAllocation::kOwl;
  plan.pattern = SparsityPattern::unstructured(0.7);
  plan.validate();
  PrunePlan bad = plan;
  bad.pattern = SparsityPattern::n_m(2, 4);
  expect_error([&] { bad.validate(); }, ErrorKind::kUsage, {"--sparsity-allocation owl", "2:4", "unstructured"});
  bad = plan;
  bad.owl_lambda = 0.15;  // 0.7 + 0.3 = 1
  expect_error([&] { bad.validate(); }, ErrorKind::kUsage, {"--owl-lambda", "found 0.15"});
  bad.owl_lambda = -0.01;
  expect_error([&] { bad.validate(); }, ErrorKind::kUsage, {"--owl-lambda", "found -0.01"});
  bad = plan;
  for (double t : {0.0, -1.0, std::nan("")}) {
    bad.owl_threshold = t;
    expect_error([&] { bad.validate(); }, ErrorKind::kUsage, {"--owl-threshold"});
  }
  bad = plan;
  bad.method = "magnitude";  // needs no calibration of its own
  bad.calib.clear();
  expect_error([&] { bad.validate(); }, ErrorKind::kUsage, {"--sparsity-allocation owl", "--calib"});
  EXPECT_EQ(parse_allocation("owl"), SparsityAllocation::kOwl);
  EXPECT_EQ(to_string(SparsityAllocation::kUniform), "uniform");
  expect_error([] { parse_allocation("owl2"); }, ErrorKind::kUsage, {"--sparsity-allocation", "uniform or owl"});
}

// ---------------------------------------------------------------------------------------------------------------
// The masks selector.

const std::string kLayer = "model.layers.0.mlp.down_proj";

void write_tensors(const fs::path& file, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                   const std::map<std::string, std::string>& metadata = {}) {
  std::vector<TensorBytes> bytes;
  for (const auto& t : tensors) bytes.push_back(tensor_bytes(t.first, t.second));
  write_safetensors(file, bytes, metadata);
}

std::unique_ptr<MaskSelector> masks_from(const fs::path& file) {
  SelectorSettings settings;
  settings.masks = file;
  return make_selector("masks", settings);
}

LayerStats named(const std::string& layer) {
  LayerStats stats;
  stats.layer = layer;
  return stats;
}

TEST(MaskFileTest, ReadsOptimasPackedMasks) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  at::manual_seed(seed);
  const TempDir dir;
  const int64_t out = 6, in = 21;  // not a multiple of 8: the last byte of a row is padded
  const at::Tensor pruned = at::rand({out, in}) < 0.4;
  const at::Tensor other = at::rand({3, 8}) < 0.5;
  write_tensors(dir / "masks.safetensors",
                {{kLayer + ".mask", pack_mask(pruned)}, {"model.layers.0.self_attn.q_proj.mask", pack_mask(other)}},
                {{"format", "optima-masks"}});
  const auto selector = masks_from(dir / "masks.safetensors");
  selector->check_layers(std::vector<LayerTarget>{{kLayer, out, in, SparsityPattern::unstructured(0.5)}});
  const at::Tensor w = at::randn({out, in}, at::kDouble);
  const Selection s = selector->select(w, named(kLayer), SparsityPattern::unstructured(0.5));
  EXPECT_TRUE(at::equal(s.pruned, pruned));
  EXPECT_TRUE(at::equal(s.weight, w.masked_fill(pruned, 0)));
  const Selection q =
      selector->select(at::randn({3, 8}), named("model.layers.0.self_attn.q_proj"), SparsityPattern::unstructured(0.9));
  EXPECT_TRUE(at::equal(q.pruned, other));  // the file's mask, whatever the unstructured target
}

TEST(MaskFileTest, ReadsACheckpointsZerosInEveryLayout) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  at::manual_seed(seed);
  const TempDir dir;
  const at::Tensor pruned = at::rand({8, 16}) < 0.5;
  const at::Tensor weight = (at::randn({8, 16}) + 10).masked_fill(pruned, 0).to(at::kBFloat16);
  const std::string second = "model.layers.1.mlp.down_proj";
  const at::Tensor pruned2 = at::rand({8, 16}) < 0.3;
  // One file; and the same tensors as two shards with an index.
  write_tensors(dir / "model.safetensors", {{kLayer + ".weight", weight}, {"model.norm.weight", at::ones({16})}});
  write_tensors(dir / "a.safetensors", {{kLayer + ".weight", weight}});
  write_tensors(dir / "b.safetensors", {{second + ".weight", (at::ones({8, 16}) * 2).masked_fill(pruned2, 0)}});
  {
    std::ofstream index(dir / "model.safetensors.index.json");
    index << R"({"metadata": {}, "weight_map": {")" << kLayer << R"(.weight": "a.safetensors", ")" << second
          << R"(.weight": "b.safetensors"}})";
  }
  for (const char* file : {"model.safetensors", "model.safetensors.index.json"}) {
    SCOPED_TRACE(file);
    const auto selector = masks_from(dir / file);
    const Selection s = selector->select(at::randn({8, 16}), named(kLayer), SparsityPattern::unstructured(0.5));
    EXPECT_TRUE(at::equal(s.pruned, pruned));
  }
  const auto sharded = masks_from(dir / "model.safetensors.index.json");
  EXPECT_TRUE(at::equal(sharded->select(at::randn({8, 16}), named(second), SparsityPattern()).pruned, pruned2));
}

TEST(MaskFileTest, RefusesBadData) {
  const TempDir dir;
  at::Tensor pruned = at::zeros({4, 8}, at::kBool);
  pruned.slice(1, 0, 2).fill_(true);  // 2 of every 4: 2:4 holds
  pruned.slice(1, 4, 6).fill_(true);
  pruned[3][1] = false;  // row 3, inputs 0-3: one pruned
  const fs::path file = dir / "masks.safetensors";
  write_tensors(file, {{kLayer + ".mask", pack_mask(pruned)}}, {{"format", "optima-masks"}});
  const auto selector = masks_from(file);
  const auto check = [&](const std::string& layer, int64_t out, int64_t in, const SparsityPattern& target) {
    selector->check_layers(std::vector<LayerTarget>{{layer, out, in, target}});
  };
  check(kLayer, 4, 8, SparsityPattern::unstructured(0.5));
  expect_error([&] { check("model.layers.1.mlp.down_proj", 4, 8, SparsityPattern()); }, ErrorKind::kInput,
               {file.string(), "model.layers.1.mlp.down_proj", "no such tensor"});
  expect_error([&] { check(kLayer, 4, 16, SparsityPattern()); }, ErrorKind::kInput,
               {file.string(), kLayer + ".mask", "expected U8 [4, 2]", "found U8 [4, 1]"});
  expect_error([&] { check(kLayer, 4, 8, SparsityPattern::n_m(2, 4)); }, ErrorKind::kInput,
               {file.string(), kLayer, "2:4", "row 3, inputs 0-3", "at least 2 pruned", "found 1"});
  expect_error(
      [&] {
        selector->select(at::randn({4, 8}), named(kLayer), SparsityPattern::n_m(2, 4));
      },
      ErrorKind::kInput, {kLayer, "row 3"});
  // Padding bits past the last column.
  const fs::path padded = dir / "padded.safetensors";
  at::Tensor packed = pack_mask(at::zeros({2, 5}, at::kBool));
  packed[1][0] = 1 << 6;
  write_tensors(padded, {{kLayer + ".mask", packed}}, {{"format", "optima-masks"}});
  expect_error(
      [&] {
        masks_from(padded)->check_layers(std::vector<LayerTarget>{{kLayer, 2, 5, SparsityPattern()}});
      },
      ErrorKind::kInput, {padded.string(), "padding bits"});
  // A checkpoint tensor of another shape, or not floating.
  const fs::path ckpt = dir / "model.safetensors";
  write_tensors(ckpt, {{kLayer + ".weight", at::ones({4, 9})},
                       {"model.layers.1.mlp.down_proj.weight", at::ones({4, 8}, at::kInt)}});
  const auto from_ckpt = masks_from(ckpt);
  expect_error(
      [&] {
        from_ckpt->select(at::randn({4, 8}), named(kLayer), SparsityPattern());
      },
      ErrorKind::kInput, {ckpt.string(), kLayer + ".weight", "[4, 8]", "found F32 [4, 9]"});
  expect_error(
      [&] {
        from_ckpt->select(at::randn({4, 8}), named("model.layers.1.mlp.down_proj"), SparsityPattern());
      },
      ErrorKind::kInput, {"model.layers.1.mlp.down_proj.weight", "a floating type", "found I32"});
  // Settings: no file, a missing file, --masks with another method.
  expect_error([] { masks_from(""); }, ErrorKind::kUsage, {"--method masks needs --masks"});
  expect_error([&] { masks_from(dir / "nope.safetensors"); }, ErrorKind::kUsage,
               {(dir / "nope.safetensors").string(), "no such file"});
  PrunePlan plan;
  plan.model = "m";
  plan.out = "o";
  plan.method = "magnitude";
  plan.masks = file;
  expect_error([&] { plan.validate(); }, ErrorKind::kUsage, {"--masks is read by --method masks only"});
  plan.method = "masks";
  plan.validate();
  plan.allocation = SparsityAllocation::kOwl;
  plan.calib = "c.txt";
  expect_error([&] { plan.validate(); }, ErrorKind::kUsage, {"--method masks", "uniform"});
}

}  // namespace
}  // namespace optima
