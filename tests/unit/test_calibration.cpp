// Calibration data: CPython-exact random numbers, the reference sampling rule and the concatenated rule against
// goldens made by the reference code with transformers (scripts/make_calibration_goldens.py), file formats.
#include <fstream>

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
};

class CalibrationGolden : public ::testing::TestWithParam<Golden> {};

TEST_P(CalibrationGolden, WindowsMatchTheReferenceCode) {
  const Golden g = GetParam();
  const fs::path c4 = assets_dir() / "text" / "calib" / "c4.utf8";
  OPTIMA_REQUIRE_ASSET(c4);
  const auto tokenizer = load_tokenizer(assets_dir() / "tokenizers" / "opt");
  const CalibrationSet set = load_calibration(c4, *tokenizer, {g.nsamples, g.seqlen, g.seed});
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

INSTANTIATE_TEST_SUITE_P(C4, CalibrationGolden,
                         ::testing::Values(Golden{"c4_opt_reference_n8_l256_seed0.npy", 8, 256, 0, "reference"},
                                           Golden{"c4_opt_reference_n5_l512_seed7.npy", 5, 512, 7, "reference"},
                                           Golden{"c4_opt_concatenated_n4_l4391_seed0.npy", 4, 4391, 0,
                                                  "concatenated"}));

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

}  // namespace
}  // namespace optima::test
