// The forward pass against golden logits from transformers (tests/data/models, made by
// scripts/make_model_goldens.py), the perplexity protocol against transformers' per-window losses, and the real
// stories260k model against its published sanity figure.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <thread>

#include "model/families/sliding_window.h"
#include "model/families/small_head_attention_cpu.h"
#include "optima/core/parallel.h"
#include "optima/eval/perplexity.h"
#include "optima/io/json_file.h"
#include "optima/io/safetensors.h"
#include "optima/io/tensor.h"
#include "optima/model/decoder.h"
#include "optima/stats/accumulator.h"
#include "optima/text/tokenizer.h"
#include "test_util.h"

namespace optima::test {
namespace {

const char* kGoldenModels[] = {"opt",   "opt-postln-proj", "llama-gqa",     "llama3-rope", "mistral",
                               "qwen2", "qwen3",           "phi3-longrope", "llama32-tied"};
// Goldens that also hold each block's output and each input site's Hessian (scripts/make_model_goldens.py).
const char* kExtendedGoldenModels[] = {"qwen3", "phi3-longrope", "llama32-tied"};

std::map<std::string, at::Tensor> read_golden(const fs::path& dir) {
  const auto file = SafetensorsFile::open(dir / "golden.safetensors");
  std::map<std::string, at::Tensor> out;
  for (const TensorInfo& t : file->tensors())
    out[t.name] = tensor_from_bytes(t, file->data(t), file->mapping()).clone();
  return out;
}

class GoldenModel : public ::testing::TestWithParam<const char*> {};

TEST_P(GoldenModel, LogitsMatchTransformers) {
  const fs::path dir = test_data_dir() / "models" / GetParam();
  const Checkpoint checkpoint = Checkpoint::open(dir);
  const DecoderModel model(checkpoint);
  auto golden = read_golden(dir);
  const at::Tensor logits = model.forward(golden["ids"]);
  ASSERT_EQ(logits.sizes(), golden["logits"].sizes());
  const double diff = (logits - golden["logits"]).abs().max().item<double>();
  EXPECT_LE(diff, 1e-4) << GetParam() << ": max |logit difference| vs transformers";
  std::printf("[ measured ] %s: logits max |diff| %.3g\n", GetParam(), diff);
  // The test can fail: a perturbed weight moves the logits well past the tolerance.
  EXPECT_GT(golden["logits"].abs().max().item<double>(), 1e-2);
}

TEST_P(GoldenModel, PerplexityMatchesTransformersWindowByWindow) {
  const fs::path dir = test_data_dir() / "models" / GetParam();
  const Checkpoint checkpoint = Checkpoint::open(dir);
  const DecoderModel model(checkpoint);
  auto golden = read_golden(dir);
  const auto info = read_json_file(dir / "golden.json");
  const at::Tensor stream = golden["stream"];
  std::vector<int64_t> ids(stream.data_ptr<int64_t>(), stream.data_ptr<int64_t>() + stream.numel());
  PerplexityOptions options;
  options.seqlen = info["seqlen"].get<int64_t>();
  options.batch_size = 2;  // uneven batches: 3 windows in batches of 2
  auto progress = make_null_progress();
  const PerplexityResult result = evaluate_perplexity(model, ids, options, *progress);
  ASSERT_EQ(result.windows, golden["window_nll"].numel());
  EXPECT_EQ(result.predictions, result.windows * (options.seqlen - 1));
  for (int64_t w = 0; w < result.windows; ++w)
    EXPECT_NEAR(result.window_nll[static_cast<size_t>(w)], golden["window_nll"][w].item<double>(), 1e-5)
        << "window " << w;
  EXPECT_NEAR(result.perplexity / info["perplexity"].get<double>(), 1.0, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Families, GoldenModel, ::testing::ValuesIn(kGoldenModels), [](const auto& param_info) {
  std::string name = param_info.param;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
});
INSTANTIATE_TEST_SUITE_P(GemmaFamilies, GoldenModel,
                         ::testing::Values("gemma2", "gemma3-text", "gemma3-text-untied", "gemma3-mm"),
                         [](const auto& param_info) {
                           std::string name = param_info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// Per block: optima's block outputs against transformers' (1e-4 absolute, like the logits) and each input site's
// Hessian, accumulated by InputStatistics from optima's activations, against the float64 Hessian of transformers'
// activations (1e-5 relative to its largest entry).
class ExtendedGoldenModel : public ::testing::TestWithParam<const char*> {};

TEST_P(ExtendedGoldenModel, BlockOutputsAndSiteHessiansMatchTransformers) {
  const fs::path dir = test_data_dir() / "models" / GetParam();
  const Checkpoint checkpoint = Checkpoint::open(dir);
  const DecoderModel model(checkpoint);
  auto golden = read_golden(dir);
  at::Tensor hidden = model.embed(golden["ids"]);
  double worst_hidden = 0, worst_hessian = 0;
  for (int64_t b = 0; b < model.shape().num_layers; ++b) {
    std::map<InputSite, InputStatistics> stats;
    hidden = model.block_forward(model.load_block(b), hidden, [&](InputSite site, const at::Tensor& x) {
      auto it = stats.try_emplace(site, x.size(-1), c10::Device(c10::kCPU), true, false, at::kDouble).first;
      it->second.add(x);
    });
    const at::Tensor& want = golden.at(fmt::format("hidden.{}", b));
    ASSERT_EQ(hidden.sizes(), want.sizes());
    const double diff = (hidden - want).abs().max().item<double>();
    EXPECT_LE(diff, 1e-4) << GetParam() << ": block " << b << " output, max |difference| vs transformers";
    worst_hidden = std::max(worst_hidden, diff);
    ASSERT_EQ(stats.size(), 4u);
    for (const auto& entry : stats) {
      const std::string key = fmt::format("hessian.{}.{}", b, to_string(entry.first));
      const at::Tensor& ref = golden.at(key);
      const double scale = ref.abs().max().item<double>();
      const double relative = (entry.second.hessian() - ref).abs().max().item<double>() / scale;
      EXPECT_LE(relative, 1e-5) << GetParam() << ": " << key << " vs transformers (relative to max |H|)";
      EXPECT_GT(scale, 1e-3) << key;
      worst_hessian = std::max(worst_hessian, relative);
    }
  }
  std::printf("[ measured ] %s: block outputs max |diff| %.3g, Hessians max relative diff %.3g\n", GetParam(),
              worst_hidden, worst_hessian);
}

// LongRoPE picks its factors by sequence length: a batch within original_max_position_embeddings takes the short
// factors ("ids_short"), a longer one the long factors ("ids", in LogitsMatchTransformers).
TEST_P(ExtendedGoldenModel, ShortSequencesMatchTransformers) {
  const fs::path dir = test_data_dir() / "models" / GetParam();
  auto golden = read_golden(dir);
  if (golden.count("ids_short") == 0) GTEST_SKIP() << GetParam() << " has no short batch";
  const Checkpoint checkpoint = Checkpoint::open(dir);
  const DecoderModel model(checkpoint);
  const at::Tensor logits = model.forward(golden["ids_short"]);
  ASSERT_EQ(logits.sizes(), golden["logits_short"].sizes());
  const double diff = (logits - golden["logits_short"]).abs().max().item<double>();
  EXPECT_LE(diff, 1e-4) << GetParam() << ": max |logit difference| vs transformers on the short batch";
  std::printf("[ measured ] %s: short-batch logits max |diff| %.3g\n", GetParam(), diff);
}

INSTANTIATE_TEST_SUITE_P(Families, ExtendedGoldenModel, ::testing::ValuesIn(kExtendedGoldenModels),
                         [](const auto& param_info) {
                           std::string name = param_info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(Decoder, HooksSeeEveryLinearInput) {
  const Checkpoint checkpoint = Checkpoint::open(test_data_dir() / "models" / "llama-gqa");
  const DecoderModel model(checkpoint);
  const BlockWeights block = model.load_block(1);
  const at::Tensor hidden = at::randn({2, 7, 32});
  std::map<InputSite, at::Tensor> seen;
  const at::Tensor out =
      model.block_forward(block, hidden, [&](InputSite site, const at::Tensor& x) { seen[site] = x.clone(); });
  ASSERT_EQ(seen.size(), 4u);
  // Each site's input, pushed through its linear layers, is what the block computed: check the MLP path exactly.
  const at::Tensor mid = at::silu(at::linear(seen[InputSite::kMlpInput], block.get("mlp.gate_proj.weight"))) *
                         at::linear(seen[InputSite::kMlpInput], block.get("mlp.up_proj.weight"));
  EXPECT_TRUE(at::allclose(mid, seen[InputSite::kMlpHidden], 1e-5, 1e-6));
  EXPECT_EQ(seen[InputSite::kAttentionOutput].sizes(), (std::vector<int64_t>{2, 7, 32}));
  EXPECT_EQ(seen[InputSite::kMlpHidden].size(2), 48);
  EXPECT_EQ(out.sizes(), hidden.sizes());
}

// What a family's forward pass shows its hook agrees with its layer list: each input site once, in the order of
// the linear layers that read it, as wide as those layers' inputs.
TEST_P(GoldenModel, HookSeesTheSitesOfTheLinearLayersInOrder) {
  const Checkpoint checkpoint = Checkpoint::open(test_data_dir() / "models" / GetParam());
  const DecoderModel model(checkpoint);
  std::vector<InputSite> expected;
  std::map<InputSite, int64_t> width;
  for (const LinearLayer& l : linear_layers(model.shape())) {
    if (expected.empty() || expected.back() != l.input) expected.push_back(l.input);
    width[l.input] = l.in_features;
  }
  std::vector<InputSite> seen;
  const at::Tensor hidden = model.embed(at::arange(5, at::kLong).unsqueeze(0));
  model.block_forward(model.load_block(0), hidden, [&](InputSite site, const at::Tensor& x) {
    seen.push_back(site);
    EXPECT_EQ(x.size(-1), width[site]) << to_string(site);
  });
  EXPECT_EQ(seen, expected) << GetParam();
}

TEST(Decoder, ReducedPrecisionStaysCloseToFp32) {
  const Checkpoint checkpoint = Checkpoint::open(test_data_dir() / "models" / "opt");
  auto golden = read_golden(test_data_dir() / "models" / "opt");
  RunOptions options;
  options.dtype = at::kBFloat16;
  const DecoderModel model(checkpoint, options);
  const at::Tensor logits = model.forward(golden["ids"]);
  EXPECT_EQ(logits.scalar_type(), at::kFloat);
  const double scale = golden["logits"].abs().max().item<double>();
  EXPECT_LE((logits - golden["logits"]).abs().max().item<double>(), 0.05 * scale);
}

// The stories260k README: BOS + at most 256 tokens of each of the first 12 non-empty lines of tiny.utf8, 1,110
// predicted tokens, perplexity 6.76 from an independent float64 forward pass.
TEST(Stories260k, SanityPerplexity) {
  const fs::path model_dir = assets_dir() / "models" / "stories260k";
  const fs::path text = assets_dir() / "text" / "tinystories" / "tiny.utf8";
  OPTIMA_REQUIRE_ASSET(model_dir);
  OPTIMA_REQUIRE_ASSET(text);
  const Checkpoint checkpoint = Checkpoint::open(model_dir);
  const DecoderModel model(checkpoint);
  const auto tokenizer = load_tokenizer(model_dir);
  std::ifstream in(text);
  std::string line;
  double nll = 0;
  int64_t predicted = 0, lines = 0;
  while (lines < 12 && std::getline(in, line)) {
    if (line.empty()) continue;
    ++lines;
    std::vector<int64_t> ids = tokenizer->encode(line, /*add_special=*/true);
    ASSERT_EQ(ids[0], 1);
    if (ids.size() > 257) ids.resize(257);
    const at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0);
    const at::Tensor logprobs = at::log_softmax(model.forward(input).to(at::kDouble)[0], -1);
    for (size_t t = 0; t + 1 < ids.size(); ++t) nll -= logprobs[static_cast<int64_t>(t)][ids[t + 1]].item<double>();
    predicted += static_cast<int64_t>(ids.size()) - 1;
  }
  EXPECT_EQ(predicted, 1110);
  EXPECT_NEAR(std::exp(nll / static_cast<double>(predicted)), 6.76, 0.005);
}

TEST(Perplexity, RefusesBadSettings) {
  const Checkpoint checkpoint = Checkpoint::open(test_data_dir() / "models" / "opt");
  const DecoderModel model(checkpoint);
  auto progress = make_null_progress();
  PerplexityOptions options;
  options.seqlen = 65;  // the model has 64 positions
  expect_error([&] { evaluate_perplexity(model, std::vector<int64_t>(200, 5), options, *progress); }, ErrorKind::kUsage,
               {"seqlen 65", "64 positions"});
  options.seqlen = 32;
  expect_error([&] { evaluate_perplexity(model, std::vector<int64_t>(20, 5), options, *progress); }, ErrorKind::kInput,
               {"too short", "at least 32 tokens", "20 tokens"});
}

// A copy of a golden model with `name` changed by `edit`.
fs::path edited_copy(const TempDir& dir, const char* golden, const std::string& name,
                     const std::function<void(at::Tensor&)>& edit) {
  const fs::path from = test_data_dir() / "models" / golden;
  const Checkpoint checkpoint = Checkpoint::open(from);
  std::vector<at::Tensor> keep;
  std::vector<TensorBytes> tensors;
  for (const auto& t : checkpoint.tensors()) {
    at::Tensor value = checkpoint.load(t.name).clone();
    if (t.name == name) edit(value);
    keep.push_back(value);
    tensors.push_back(tensor_bytes(t.name, keep.back()));
  }
  fs::copy_file(from / "config.json", dir / "config.json");
  sort_for_safetensors(tensors);
  write_safetensors(dir / "model.safetensors", tensors, {{"format", "pt"}});
  return dir.path();
}

TEST(Decoder, RefusesNonFiniteWeightsNamingTheTensor) {
  for (const std::string name :
       {"model.layers.1.mlp.up_proj.weight", "model.layers.0.input_layernorm.weight", "model.embed_tokens.weight"}) {
    TempDir dir;
    const fs::path model = edited_copy(dir, "llama-gqa", name, [](at::Tensor& t) { t.view(-1)[3] = NAN; });
    const Checkpoint checkpoint = Checkpoint::open(model);
    expect_error(
        [&] {
          const DecoderModel decoder(checkpoint);
          for (int64_t b = 0; b < decoder.shape().num_layers; ++b) decoder.load_block(b);
        },
        ErrorKind::kNumeric, {(model / "model.safetensors").string(), name, "NaN or Inf", "1 non-finite"});
    RunOptions allow;
    allow.allow_non_finite = true;
    const DecoderModel decoder(checkpoint, allow);
    EXPECT_NO_THROW(decoder.load_block(1));
  }
}

TEST(Decoder, WeightsThatOverflowTheComputeDtypeAreNamed) {
  TempDir dir;
  const std::string name = "model.layers.0.self_attn.o_proj.weight";
  const fs::path model = edited_copy(dir, "llama-gqa", name, [](at::Tensor& t) { t.view(-1)[0] = 1e6; });
  const Checkpoint checkpoint = Checkpoint::open(model);
  RunOptions half;
  half.dtype = at::kHalf;
  expect_error([&] { DecoderModel(checkpoint, half).load_block(0); }, ErrorKind::kNumeric,
               {name, "too large for Half"});
  EXPECT_NO_THROW(DecoderModel(checkpoint).load_block(0));
}

TEST(Decoder, HalfPrecisionCheckpointsComputeInFloat32OnTheCpuOnly) {
  const c10::Device cpu(c10::kCPU), cuda(c10::kCUDA, 0);
  EXPECT_EQ(default_compute_dtype(at::kHalf, cpu), at::kFloat);
  EXPECT_EQ(default_compute_dtype(at::kBFloat16, cpu), at::kFloat);
  EXPECT_EQ(default_compute_dtype(at::kFloat, cpu), at::kFloat);
  EXPECT_EQ(default_compute_dtype(at::kDouble, cpu), at::kDouble);
  EXPECT_EQ(default_compute_dtype(at::kHalf, cuda), at::kHalf);
  EXPECT_EQ(default_compute_dtype(at::kBFloat16, cuda), at::kBFloat16);
}

// The small-head attention kernel against the eager formula in float64, on fresh random inputs with large scores
// (scaled by 4), sequence lengths on both sides of the kernel's 8-lane blocks, strided inputs and grouped heads.
TEST(Attention, SmallHeadKernelMatchesFloat64) {
  const at::Tensor probe = at::randn({1, 1, 4, 8});
  if (!ops::small_head_attention_applies(probe, probe, probe)) GTEST_SKIP() << "no AVX2 + FMA on this CPU";
  for (const int64_t dim : {8, 16, 24, 32}) {
    for (const int64_t seq : {1, 7, 8, 9, 63, 200}) {
      // Grouped-query attention (6 query heads on 2 key/value heads) and one key/value head per query head.
      const int64_t kv_heads = seq % 2 == 0 ? 2 : 6;
      const at::Tensor q = at::randn({2, 6, seq, dim}) * 4, k = at::randn({2, kv_heads, seq, dim}),
                       v = at::randn({2, kv_heads, seq, dim});
      // Strided inputs (heads transposed out of [batch, seq, heads, dim], k out of a wider projection), as the
      // families pass them.
      const at::Tensor q_strided = q.transpose(1, 2).contiguous().transpose(1, 2);
      const at::Tensor k_strided = at::cat({k, k}, 3).transpose(1, 2).contiguous().transpose(1, 2).narrow(3, dim, dim);
      ASSERT_TRUE(ops::small_head_attention_applies(q_strided, k_strided, v));
      const at::Tensor got = ops::small_head_causal_attention(q_strided, k_strided, v);
      const at::Tensor q64 = q.to(at::kDouble), k64 = k.to(at::kDouble).repeat_interleave(6 / kv_heads, 1),
                       v64 = v.to(at::kDouble).repeat_interleave(6 / kv_heads, 1);
      const at::Tensor mask = at::ones({seq, seq}, at::kBool).triu(1);
      const at::Tensor scores =
          at::matmul(q64, k64.transpose(2, 3)).div(std::sqrt(static_cast<double>(dim))).masked_fill(mask, -INFINITY);
      const at::Tensor want = at::matmul(at::softmax(scores, -1), v64);
      EXPECT_LT((got.to(at::kDouble) - want).abs().max().item<double>(), 1e-5) << "dim " << dim << " seq " << seq;
    }
  }
  // Outside its domain the kernel is not chosen: half precision, head_dim 12 or 64, other shapes for k.
  EXPECT_FALSE(ops::small_head_attention_applies(probe.to(at::kHalf), probe.to(at::kHalf), probe.to(at::kHalf)));
  const at::Tensor odd = at::randn({1, 1, 4, 12}), wide = at::randn({1, 1, 4, 64});
  EXPECT_FALSE(ops::small_head_attention_applies(odd, odd, odd));
  EXPECT_FALSE(ops::small_head_attention_applies(wide, wide, wide));
  EXPECT_FALSE(ops::small_head_attention_applies(probe, at::randn({1, 1, 5, 8}), at::randn({1, 1, 5, 8})));
  const at::Tensor three_heads = at::randn({1, 3, 4, 8}), two_heads = at::randn({1, 2, 4, 8});
  EXPECT_FALSE(ops::small_head_attention_applies(three_heads, two_heads, two_heads));  // 2 does not divide 3
  const at::Tensor column_major = at::randn({1, 1, 8, 4}).transpose(2, 3);  // [1, 1, 4, 8], rows not contiguous
  EXPECT_FALSE(ops::small_head_attention_applies(probe, probe, column_major));
}

// Sliding-window attention past its window with grouped key/value heads (LibTorch's path, heads repeated inside)
// against the eager formula in float64 on fresh random inputs.
TEST(Attention, SlidingWindowWithGroupedHeadsMatchesFloat64) {
  const int64_t seq = 20, window = 6, dim = 16;
  const at::Tensor q = at::randn({2, 4, seq, dim}) * 2, k = at::randn({2, 2, seq, dim}),
                   v = at::randn({2, 2, seq, dim});
  const at::Tensor got = ops::sliding_window_attention(q, k, v, window);
  const at::Tensor i = at::arange(seq).unsqueeze(1), j = at::arange(seq).unsqueeze(0);
  const at::Tensor hidden = (j > i).logical_or(j <= i - window);
  const at::Tensor k64 = k.to(at::kDouble).repeat_interleave(2, 1), v64 = v.to(at::kDouble).repeat_interleave(2, 1);
  const at::Tensor scores = at::matmul(q.to(at::kDouble), k64.transpose(2, 3))
                                .div(std::sqrt(static_cast<double>(dim)))
                                .masked_fill(hidden, -INFINITY);
  const at::Tensor want = at::matmul(at::softmax(scores, -1), v64).transpose(1, 2).reshape({2, seq, 4 * dim});
  EXPECT_LT((got.to(at::kDouble) - want).abs().max().item<double>(), 1e-5);
}

// parallel_ranges (the attention kernel's and the solver gathers' loop) with three threads: every item exactly once,
// whatever the count and grain, from more than one thread when there is enough work; a failing item's exception
// reaches the caller. Where more than one thread is expected, a piece waits for a second thread to arrive instead of
// sleeping for a while: on a busy machine the caller could otherwise take every piece before a helper starts.
TEST(ParallelRanges, EveryItemOnceAndErrorsPropagate) {
  const int previous = at::get_num_threads();
  at::set_num_threads(3);
  for (const int64_t count : {int64_t{1}, int64_t{2}, int64_t{7}, int64_t{64}, int64_t{1000}}) {
    for (const int64_t grain : {int64_t{1}, int64_t{5}, int64_t{64}}) {
      const bool expect_several = count / grain >= 3 && count >= 64;
      std::vector<std::atomic<int>> seen(static_cast<size_t>(count));
      std::mutex mutex;
      std::condition_variable arrived;
      std::set<std::thread::id> workers;
      parallel_ranges(count, grain, [&](int64_t begin, int64_t end) {
        ASSERT_LT(begin, end);
        for (int64_t i = begin; i < end; ++i) seen[static_cast<size_t>(i)].fetch_add(1);
        std::unique_lock<std::mutex> lock(mutex);
        workers.insert(std::this_thread::get_id());
        arrived.notify_all();
        // A generous bound (a helper starts in microseconds), so that a parallel_ranges that never starts one fails
        // instead of hanging.
        if (expect_several) arrived.wait_for(lock, std::chrono::seconds(10), [&] { return workers.size() > 1; });
      });
      for (int64_t i = 0; i < count; ++i) EXPECT_EQ(seen[static_cast<size_t>(i)].load(), 1) << count << " " << i;
      if (expect_several) {
        EXPECT_GT(workers.size(), 1u) << count << " items, grain " << grain;
      }
      if (count / grain < 2) {
        EXPECT_EQ(workers.size(), 1u) << count << " items, grain " << grain;
      }
    }
  }
  EXPECT_THROW(parallel_ranges(100, 1,
                               [](int64_t begin, int64_t end) {
                                 if (begin <= 50 && 50 < end) throw std::runtime_error("item 50");
                               }),
               std::runtime_error);
  at::set_num_threads(previous);
}

TEST(Tokenizer, MustFitTheModelVocabulary) {
  const fs::path dir = test_data_dir() / "tokenizer" / "tiny_bpe";
  const auto tokenizer = load_tokenizer(dir);
  const int64_t size = tokenizer->vocab_size();
  expect_error([&] { check_tokenizer_fits(*tokenizer, dir, size - 1, "/models/m/config.json"); }, ErrorKind::kInput,
               {dir.string(), "/models/m/config.json", "vocabulary",
                fmt::format("expected at most {} tokens", size - 1), fmt::format("found {} tokens", size)});
  EXPECT_NO_THROW(check_tokenizer_fits(*tokenizer, dir, size, "/models/m/config.json"));
  EXPECT_NO_THROW(check_tokenizer_fits(*tokenizer, dir, size * 20, "/models/m/config.json"));  // a warning only
}

}  // namespace
}  // namespace optima::test
