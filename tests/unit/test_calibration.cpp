// Calibration data: CPython-exact random numbers, the reference sampling rule and the concatenated rule against
// goldens made by the reference code with transformers (scripts/make_calibration_goldens.py), file formats.
#include <fstream>
#include <random>

#include "optima/text/calibration.h"
#include "optima/text/python_random.h"
#include "optima/text/tokenizer.h"
#include "test_util.h"

namespace optima::test {
namespace {

// Values printed by CPython 3.11: random.seed(0); [random.randint(0, 117) for _ in range(6)] etc.
TEST(PythonRandom, MatchesCPython) {
  PythonRandom a(0);
  std::vector<int64_t> draws;
  for (int i = 0; i < 6; ++i) draws.push_back(a.randint(0, 117));
  EXPECT_EQ(draws, (std::vector<int64_t>{108, 49, 97, 113, 53, 5}));
  PythonRandom b(0);
  EXPECT_EQ(b.getrandbits(32), 3626764237u);
  EXPECT_EQ(b.getrandbits(32), 1654615998u);
  PythonRandom c(12345678901);  // a seed wider than 32 bits: two key words
  draws.clear();
  for (int i = 0; i < 4; ++i) draws.push_back(c.randint(0, 1000000));
  EXPECT_EQ(draws, (std::vector<int64_t>{991965, 625564, 343932, 910305}));
  PythonRandom d(7);
  EXPECT_EQ(d.randint(5, 5), 5);
  EXPECT_EQ(d.randint(5, 5), 5);
  EXPECT_EQ(d.randint(0, int64_t{1} << 40), 159121178576);  // more than 32 random bits
}

struct Golden {
  const char* file;
  int64_t nsamples, seqlen;
  uint64_t seed;
  const char* rule;
  CalibRule asked;  // the goldens were made by the reference code, or by its concatenated variant
};

class CalibrationGolden : public ::testing::TestWithParam<Golden> {};

TEST_P(CalibrationGolden, WindowsMatchTheReferenceCode) {
  const Golden g = GetParam();
  const fs::path c4 = assets_dir() / "text" / "calib" / "c4.utf8";
  OPTIMA_REQUIRE_ASSET(c4);
  const auto tokenizer = load_tokenizer(assets_dir() / "tokenizers" / "opt");
  const CalibrationSet set = load_calibration(c4, *tokenizer, {g.nsamples, g.seqlen, g.seed, g.asked});
  EXPECT_EQ(set.rule, g.rule);
  int64_t rows = 0, cols = 0;
  const auto want = read_npy_ids(test_data_dir() / "calibration" / g.file, rows, cols);
  ASSERT_EQ(rows, g.nsamples);
  ASSERT_EQ(cols, g.seqlen);
  ASSERT_EQ(set.ids.size(), want.size());
  for (int64_t s = 0; s < rows; ++s) {
    const auto begin = static_cast<size_t>(s * cols);
    EXPECT_TRUE(std::equal(want.begin() + begin, want.begin() + begin + cols, set.ids.begin() + begin))
        << "window " << s;
  }
}

INSTANTIATE_TEST_SUITE_P(
    C4, CalibrationGolden,
    ::testing::Values(Golden{"c4_opt_reference_n8_l256_seed0.npy", 8, 256, 0, "reference", CalibRule::kReference},
                      Golden{"c4_opt_reference_n5_l512_seed7.npy", 5, 512, 7, "reference", CalibRule::kReference},
                      Golden{"c4_opt_concatenated_n4_l4391_seed0.npy", 4, 4391, 0, "concatenated",
                             CalibRule::kConcatenated},
                      // auto: at least 8 (5) of the 118 documents have more than 256 (512)
                      // tokens, so it picks the reference rule; none has more than 4391.
                      Golden{"c4_opt_reference_n8_l256_seed0.npy", 8, 256, 0, "reference", CalibRule::kAuto},
                      Golden{"c4_opt_concatenated_n4_l4391_seed0.npy", 4, 4391, 0, "concatenated", CalibRule::kAuto}));

TEST(Calibration, NpyRoundTripAndShapeCheck) {
  TempDir dir;
  std::vector<int64_t> ids(6 * 5);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>(i * 7919 % 50000);
  write_npy_ids(dir / "ids.npy", ids, 6, 5);
  int64_t rows = 0, cols = 0;
  EXPECT_EQ(read_npy_ids(dir / "ids.npy", rows, cols), ids);
  EXPECT_EQ(rows, 6);
  EXPECT_EQ(cols, 5);
  const auto tokenizer = load_tokenizer(test_data_dir() / "tokenizer" / "tiny_bpe");
  const CalibrationSet set = load_calibration(dir / "ids.npy", *tokenizer, {6, 5, 0});
  EXPECT_EQ(set.rule, "pre-tokenized");
  EXPECT_EQ(set.ids, ids);
  expect_error(
      [&] {
        load_calibration(dir / "ids.npy", *tokenizer, {128, 2048, 0});
      },
      ErrorKind::kInput, {"ids.npy", "128 x 2048", "6 x 5", "--nsamples 6 --seqlen 5"});
  std::ofstream(dir / "bad.npy") << "not numpy";
  expect_error(
      [&] {
        load_calibration(dir / "bad.npy", *tokenizer, {1, 1, 0});
      },
      ErrorKind::kInput, {"bad.npy", "NUMPY"});
}

TEST(Calibration, JsonLinesAndErrors) {
  TempDir dir;
  std::ofstream(dir / "docs.jsonl") << "{\"text\": \"first document\"}\n\n{\"text\": \"second\", \"id\": 3}\n";
  EXPECT_EQ(read_documents(dir / "docs.jsonl"), (std::vector<std::string>{"first document", "second"}));
  std::ofstream(dir / "broken.jsonl") << "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n";
  expect_error([&] { read_documents(dir / "broken.jsonl"); }, ErrorKind::kInput, {"broken.jsonl: line 2", "\"text\""});
  std::ofstream(dir / "empty.txt") << "\n  \n";
  expect_error([&] { read_documents(dir / "empty.txt"); }, ErrorKind::kInput, {"empty.txt", "no documents"});
  expect_error([&] { read_documents(dir / "absent.txt"); }, ErrorKind::kInput, {"absent.txt", "does not exist"});
}

TEST(Calibration, TooShortAndBadSettings) {
  const auto tokenizer = load_tokenizer(test_data_dir() / "tokenizer" / "tiny_bpe");
  const std::vector<std::string> docs = {"a short document", "another one"};
  expect_error(
      [&] {
        sample_calibration(docs, *tokenizer, {4, 2048, 0}, "docs.txt");
      },
      ErrorKind::kInput, {"docs.txt", "too short", "more than 2048 tokens"});
  expect_error([&] { sample_calibration(docs, *tokenizer, {0, 8, 0}, "docs.txt"); }, ErrorKind::kUsage, {"nsamples"});
  // Deterministic for a seed, different across seeds.
  const auto a = sample_calibration(docs, *tokenizer, {3, 4, 1}, "docs.txt");
  const auto b = sample_calibration(docs, *tokenizer, {3, 4, 1}, "docs.txt");
  const auto c = sample_calibration(docs, *tokenizer, {3, 4, 2}, "docs.txt");
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_NE(a.ids, c.ids);
}

// The --calib-rule decision on fresh counts around the threshold of auto (qualifying documents == nsamples).
TEST(Calibration, RuleChoice) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const int64_t nsamples = std::uniform_int_distribution<int64_t>(2, 4096)(rng);
  const int64_t documents = nsamples + std::uniform_int_distribution<int64_t>(0, 10000)(rng);
  const int64_t fewer = std::uniform_int_distribution<int64_t>(1, nsamples - 1)(rng);
  const int64_t more = std::uniform_int_distribution<int64_t>(nsamples, documents)(rng);
  const auto choose = [&](CalibRule asked, int64_t qualifying, bool eos) {
    return choose_calibration_rule(asked, qualifying, documents, nsamples, 256, eos, "docs.txt");
  };
  // auto: reference from nsamples qualifying documents on, concatenated below.
  EXPECT_EQ(choose(CalibRule::kAuto, nsamples, true).rule, CalibRule::kReference);
  EXPECT_EQ(choose(CalibRule::kAuto, more, true).rule, CalibRule::kReference);
  EXPECT_FALSE(choose(CalibRule::kAuto, more, true).few_documents);
  EXPECT_EQ(choose(CalibRule::kAuto, nsamples - 1, true).rule, CalibRule::kConcatenated);
  EXPECT_EQ(choose(CalibRule::kAuto, fewer, true).rule, CalibRule::kConcatenated);
  EXPECT_EQ(choose(CalibRule::kAuto, 0, true).rule, CalibRule::kConcatenated);
  const RuleChoice why = choose(CalibRule::kAuto, fewer, true);
  EXPECT_NE(why.reason.find(fmt::format("{} of {} documents have more than 256 tokens", fewer, documents)),
            std::string::npos)
      << why.reason;
  EXPECT_NE(why.reason.find(fmt::format("fewer than the {} windows", nsamples)), std::string::npos) << why.reason;
  // Without EOS nothing can be joined: auto keeps the reference rule (warned), as long as a document qualifies.
  EXPECT_EQ(choose(CalibRule::kAuto, fewer, false).rule, CalibRule::kReference);
  EXPECT_TRUE(choose(CalibRule::kAuto, fewer, false).few_documents);
  // Asked for by name: that rule, warned when the reference rule has fewer documents than windows.
  EXPECT_EQ(choose(CalibRule::kReference, fewer, true).rule, CalibRule::kReference);
  EXPECT_TRUE(choose(CalibRule::kReference, fewer, true).few_documents);
  EXPECT_EQ(choose(CalibRule::kConcatenated, more, true).rule, CalibRule::kConcatenated);
  // A rule that cannot run is an input error, never an endless redraw.
  expect_error([&] { choose(CalibRule::kReference, 0, true); }, ErrorKind::kInput,
               {"docs.txt", "no document is longer than seqlen", "--calib-rule concatenated"});
  expect_error([&] { choose(CalibRule::kAuto, 0, false); }, ErrorKind::kInput,
               {"docs.txt", fmt::format("0 of {} documents", documents), "no EOS"});
  expect_error([&] { choose(CalibRule::kConcatenated, more, false); }, ErrorKind::kInput, {"docs.txt", "EOS"});
  EXPECT_EQ(parse_calib_rule("concatenated"), CalibRule::kConcatenated);
  expect_error([] { parse_calib_rule("joined"); }, ErrorKind::kUsage,
               {"--calib-rule", "joined", "auto, reference or concatenated"});
}

// The concatenated sampler on a stream whose ids are their positions: each window is the slice that starts at
// CPython's random.seed(seed); random.randint(0, len - seqlen - 1), drawn once per window.
TEST(Calibration, ConcatenatedSamplerIsDeterministicAndTerminates) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const int64_t seqlen = std::uniform_int_distribution<int64_t>(1, 64)(rng);
  const int64_t length = seqlen + std::uniform_int_distribution<int64_t>(1, 5000)(rng);
  const int64_t nsamples = std::uniform_int_distribution<int64_t>(1, 50)(rng);
  const uint64_t draw_seed = rng();
  std::vector<int64_t> stream(static_cast<size_t>(length));
  for (int64_t i = 0; i < length; ++i) stream[static_cast<size_t>(i)] = i;
  const auto ids = sample_stream_windows(stream, nsamples, seqlen, draw_seed, "stream");
  ASSERT_EQ(static_cast<int64_t>(ids.size()), nsamples * seqlen);
  PythonRandom reference(draw_seed);
  for (int64_t s = 0; s < nsamples; ++s) {
    const int64_t start = reference.randint(0, length - seqlen - 1);
    for (int64_t t = 0; t < seqlen; ++t) ASSERT_EQ(ids[static_cast<size_t>(s * seqlen + t)], start + t) << s;
  }
  EXPECT_EQ(sample_stream_windows(stream, nsamples, seqlen, draw_seed, "stream"), ids);
  // The shortest stream that holds a window: every window starts at 0. One token fewer: an error, not a hang.
  const std::vector<int64_t> tight(stream.begin(), stream.begin() + seqlen + 1);
  const auto only = sample_stream_windows(tight, 3, seqlen, draw_seed, "tight");
  for (int64_t s = 0; s < 3; ++s) EXPECT_EQ(only[static_cast<size_t>(s * seqlen)], 0);
  const std::vector<int64_t> short_stream(stream.begin(), stream.begin() + seqlen);
  expect_error([&] { sample_stream_windows(short_stream, 3, seqlen, draw_seed, "short"); }, ErrorKind::kInput,
               {"short", "too short for one window"});
}

// sample_calibration with auto: one long document among short ones is not enough for 4 windows, so the documents
// are joined; with 4 long documents the reference rule runs. The set records what was asked, used and why.
TEST(Calibration, AutoRuleOnDocuments) {
  const auto tokenizer = load_tokenizer(test_data_dir() / "tokenizer" / "tiny_bpe");
  const std::string long_doc = "the quick brown fox jumps over the lazy dog and runs far away from here";
  std::vector<std::string> docs = {long_doc, "short", "tiny", "small one", "another"};
  const int64_t seqlen = 6;
  ASSERT_GT(static_cast<int64_t>(tokenizer->encode(long_doc, true).size()), seqlen);
  ASSERT_LE(static_cast<int64_t>(tokenizer->encode("small one", true).size()), seqlen);
  CalibrationOptions options{4, seqlen, 0};
  const CalibrationSet joined = sample_calibration(docs, *tokenizer, options, "docs.txt");
  EXPECT_EQ(joined.rule, "concatenated");
  EXPECT_EQ(joined.requested_rule, "auto");
  EXPECT_EQ(joined.qualifying_documents, 1);
  EXPECT_EQ(joined.sampling_json().at("qualifying_documents"), 1);
  EXPECT_NE(joined.rule_reason.find("1 of 5 documents"), std::string::npos) << joined.rule_reason;
  options.rule = CalibRule::kReference;
  const CalibrationSet reference = sample_calibration(docs, *tokenizer, options, "docs.txt");
  EXPECT_EQ(reference.rule, "reference");
  docs.insert(docs.end(), {long_doc + " again", long_doc + " twice", long_doc + " thrice"});
  options.rule = CalibRule::kAuto;
  EXPECT_EQ(sample_calibration(docs, *tokenizer, options, "docs.txt").rule, "reference");
}

}  // namespace
}  // namespace optima::test
