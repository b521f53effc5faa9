// Tests of optima's tokenizers: exact ids against golden files written by scripts/make_tokenizer_goldens.py with
// Hugging Face transformers (OPT, GPT-2, LLaMA-2, stories260k, a LLaMA-3-layout tokenizer.json), round trips,
// ill-formed UTF-8, and the errors for missing or malformed files.
//
// Assets come from $OPTIMA_ASSETS, else the first shared/assets folder found walking up from the current directory;
// golden files from $OPTIMA_TEST_DATA, else the OPTIMA_TEST_DATA_DIR compile definition, else "tests/data".
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "optima/core/error.h"
#include "optima/text/tokenizer.h"

namespace fs = std::filesystem;
using optima::Tokenizer;

namespace {

fs::path assets_dir() {
  if (const char* env = std::getenv("OPTIMA_ASSETS"); env && *env) return env;
  std::error_code ec;
  for (fs::path p = fs::current_path(ec); !p.empty(); p = p.parent_path()) {
    if (fs::is_directory(p / "shared" / "assets", ec)) return p / "shared" / "assets";
    if (p == p.parent_path()) break;
  }
  return {};
}

fs::path data_dir() {
  if (const char* env = std::getenv("OPTIMA_TEST_DATA"); env && *env) return env;
#ifdef OPTIMA_TEST_DATA_DIR
  return OPTIMA_TEST_DATA_DIR;
#else
  return "tests/data";
#endif
}

#define REQUIRE_ASSET(path_expr)                       \
  const fs::path asset_path = (path_expr);             \
  if (assets_dir().empty() || !fs::exists(asset_path)) \
    GTEST_SKIP() << "asset " << asset_path << " not found; set OPTIMA_ASSETS to the shared/assets folder";

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& p, const std::string& content) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << content;
}

// A fresh directory under the system temp folder, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("optima_tok_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            std::to_string(reinterpret_cast<uintptr_t>(this)) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// The same line splitting as the golden script: drop "\r", split on "\n", drop a final empty piece.
std::vector<std::string> read_lines(const fs::path& p) {
  std::string text = slurp(p);
  text.erase(std::remove(text.begin(), text.end(), '\r'), text.end());
  std::vector<std::string> lines;
  size_t pos = 0;
  while (true) {
    const size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) {
      lines.push_back(text.substr(pos));
      break;
    }
    lines.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

uint64_t fnv(const std::vector<int64_t>& values) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (int64_t v : values) h = (h ^ static_cast<uint64_t>(v)) * 0x100000001b3ULL;
  return h;
}

std::string hex_decode(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::string ids_str(const std::vector<int64_t>& ids, size_t max = 40) {
  std::string s;
  for (size_t i = 0; i < ids.size() && i < max; ++i) {
    if (i) s += ' ';
    s += std::to_string(ids[i]);
  }
  if (ids.size() > max) s += " ...";
  return s;
}

struct GoldenCorpus {
  std::string name, rel, mode;
  size_t n_lines = 0;
  int64_t total = 0;
  uint64_t aggregate = 0;
  std::map<size_t, std::pair<int64_t, uint64_t>> lines;  // index -> (count, hash)
  std::map<size_t, std::vector<int64_t>> ids;
  std::map<size_t, std::string> texts, inputs;
};

std::vector<GoldenCorpus> read_golden(const fs::path& p) {
  std::ifstream in(p);
  std::vector<GoldenCorpus> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    std::string kind;
    ss >> kind;
    if (kind.empty() || kind[0] == '#' || kind == "tokenizer") continue;
    if (kind == "corpus") {
      out.emplace_back();
      ss >> out.back().name >> out.back().rel >> out.back().mode >> out.back().n_lines;
      continue;
    }
    if (out.empty()) throw std::runtime_error("golden record before corpus: " + line);
    GoldenCorpus& c = out.back();
    std::string hash;
    size_t index = 0;
    if (kind == "total") {
      ss >> c.total >> hash;
      c.aggregate = std::stoull(hash, nullptr, 16);
      continue;
    }
    ss >> index;
    if (kind == "line") {
      int64_t count = 0;
      ss >> count >> hash;
      c.lines[index] = {count, std::stoull(hash, nullptr, 16)};
    } else if (kind == "ids") {
      auto& v = c.ids[index];
      for (int64_t id; ss >> id;) v.push_back(id);
    } else if (kind == "text" || kind == "input") {
      std::string hex;
      ss >> hex;
      (kind == "text" ? c.texts : c.inputs)[index] = hex_decode(hex);
    }
  }
  return out;
}

// GPT-2's vocabulary and merges in LLaMA-3's tokenizer.json layout, identical to build_gpt2_llama3() in
// scripts/make_tokenizer_goldens.py (which writes it through the `tokenizers` library).
void build_gpt2_llama3(const fs::path& assets, const fs::path& dir) {
  using nlohmann::json;
  const fs::path gpt2 = assets / "tokenizers" / "gpt2";
  json merges = json::array();
  std::istringstream ms(slurp(gpt2 / "merges.txt"));
  std::string line;
  for (int i = 0; std::getline(ms, line); ++i) {
    if ((i == 0 && line.rfind("#version", 0) == 0) || line.empty()) continue;
    const size_t sp = line.find(' ');
    merges.push_back(json::array({line.substr(0, sp), line.substr(sp + 1)}));
  }
  const std::string bos = "<|endoftext|>";
  json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = json::array({{{"id", 50256},
                                    {"content", bos},
                                    {"single_word", false},
                                    {"lstrip", false},
                                    {"rstrip", false},
                                    {"normalized", false},
                                    {"special", true}}});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       json::array(
           {{{"type", "Split"},
             {"pattern",
              {{"Regex",
                R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
             {"behavior", "Isolated"},
             {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}})}};
  j["post_processor"] = {
      {"type", "Sequence"},
      {"processors",
       json::array({{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}},
                    {{"type", "TemplateProcessing"},
                     {"single", json::array({{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                                             {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                     {"pair", json::array()},
                     {"special_tokens", {{bos, {{"id", bos}, {"ids", {50256}}, {"tokens", {bos}}}}}}}})}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", true},
                {"vocab", json::parse(slurp(gpt2 / "vocab.json"))},
                {"merges", merges}};
  write_file(dir / "tokenizer.json", j.dump());
  write_file(dir / "tokenizer_config.json", R"({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})");
}

// ---- golden parity ----

struct GoldenCase {
  const char* name;
  const char* dir;  // relative to the assets folder; "@data" for tests/data/tokenizer/<name>, "@gpt2_llama3" built
};

class GoldenParity : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(GoldenParity, MatchesTransformers) {
  const GoldenCase gc = GetParam();
  const fs::path golden = data_dir() / "tokenizer" / (std::string(gc.name) + ".golden");
  ASSERT_TRUE(fs::exists(golden)) << golden << " missing (set OPTIMA_TEST_DATA or run from the repository root)";
  const fs::path assets = assets_dir();
  if (assets.empty() || !fs::is_directory(assets / "text"))
    GTEST_SKIP() << "shared/assets (with its text/ corpora) not found; set OPTIMA_ASSETS";
  TempDir tmp;
  fs::path dir;
  if (std::string(gc.dir) == "@data") {
    dir = data_dir() / "tokenizer" / gc.name;
  } else if (std::string(gc.dir) == "@gpt2_llama3") {
    if (!fs::exists(assets / "tokenizers/gpt2/vocab.json")) GTEST_SKIP() << "GPT-2 asset missing";
    build_gpt2_llama3(assets, tmp.path);
    dir = tmp.path;
  } else {
    dir = assets / gc.dir;
    if (!fs::exists(dir)) GTEST_SKIP() << "asset " << dir << " not found";
  }
  const auto load_start = std::chrono::steady_clock::now();
  const std::unique_ptr<Tokenizer> tok = optima::load_tokenizer(dir);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  std::cout << "[ " << gc.name << " ] " << tok->describe() << ", loaded in " << load_s << " s\n";

  for (const GoldenCorpus& c : read_golden(golden)) {
    SCOPED_TRACE("corpus " + c.name);
    std::vector<std::string> texts;
    if (c.rel == "-") {
      for (const auto& [i, s] : c.inputs) texts.push_back(s);
    } else {
      texts = read_lines(assets / c.rel);
      if (c.mode == "joined") {
        std::string joined;
        for (size_t i = 0; i < texts.size(); ++i) joined += (i ? "\n\n" : "") + texts[i];
        texts = {joined};
      }
    }
    ASSERT_EQ(texts.size(), c.n_lines) << "corpus file differs from the one the goldens were written from";
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::vector<int64_t>> ids(texts.size());
    for (size_t i = 0; i < texts.size(); ++i) ids[i] = tok->encode(texts[i]);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::vector<int64_t> hashes;
    int64_t total = 0;
    for (const auto& v : ids) {
      hashes.push_back(static_cast<int64_t>(fnv(v)));
      total += static_cast<int64_t>(v.size());
    }
    if (c.mode == "joined" || c.name == "wikitext")
      std::cout << "[ " << gc.name << " ] " << c.name << ": " << texts.size() << " text(s), " << total << " tokens in "
                << secs << " s\n";
    int bad_lines = 0;
    for (const auto& [i, expect] : c.lines) {
      if (static_cast<int64_t>(ids[i].size()) != expect.first || fnv(ids[i]) != expect.second) {
        if (++bad_lines <= 3)
          ADD_FAILURE() << "line " << i << ": " << ids[i].size() << " ids, transformers gives " << expect.first
                        << "; ours: " << ids_str(ids[i]) << "\n  text: " << texts[i].substr(0, 200);
      }
    }
    EXPECT_EQ(bad_lines, 0) << "mismatching lines among the first " << c.lines.size();
    EXPECT_EQ(total, c.total);
    EXPECT_EQ(fnv(hashes), c.aggregate) << "some line of all " << texts.size() << " differs";
    for (const auto& [i, expect] : c.ids) {
      EXPECT_EQ(ids[i], expect) << "line " << i << ": " << texts[i].substr(0, 200);
      auto it = c.texts.find(i);
      if (it != c.texts.end()) {
        EXPECT_EQ(tok->decode(ids[i]), it->second) << "decode of line " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, GoldenParity,
                         ::testing::Values(GoldenCase{"opt", "tokenizers/opt"}, GoldenCase{"gpt2", "tokenizers/gpt2"},
                                           GoldenCase{"llama2", "tokenizers/llama2"},
                                           GoldenCase{"stories260k", "models/stories260k"},
                                           GoldenCase{"tiny_bpe", "@data"}, GoldenCase{"gpt2_llama3", "@gpt2_llama3"}),
                         [](const auto& param_info) { return std::string(param_info.param.name); });

// ---- behaviour ----

TEST(Tokenizer, OptHelloExactIds) {
  REQUIRE_ASSET(assets_dir() / "tokenizers/opt");
  const auto tok = optima::load_tokenizer(asset_path);
  EXPECT_EQ(tok->encode("Hello, my dog is cute"), (std::vector<int64_t>{2, 31414, 6, 127, 2335, 16, 11962}));
  EXPECT_EQ(tok->encode("Hello, my dog is cute", false), (std::vector<int64_t>{31414, 6, 127, 2335, 16, 11962}));
  EXPECT_EQ(tok->bos_id(), 2);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->piece(31414), "Hello");
  EXPECT_EQ(tok->piece(6), ",");
  EXPECT_EQ(tok->decode({2, 31414, 6, 127, 2335, 16, 11962, 2}), "Hello, my dog is cute");
  EXPECT_EQ(tok->describe(), "byte-level BPE (vocab.json + merges.txt, 50264 tokens)");
}

TEST(Tokenizer, SpecialTokensPerModel) {
  const fs::path a = assets_dir();
  if (a.empty() || !fs::exists(a / "tokenizers/llama2") || !fs::exists(a / "tokenizers/gpt2"))
    GTEST_SKIP() << "assets not found; set OPTIMA_ASSETS";
  const auto gpt2 = optima::load_tokenizer(a / "tokenizers/gpt2");
  EXPECT_EQ(gpt2->encode("Hello"), (std::vector<int64_t>{15496}));  // GPT-2 adds nothing
  EXPECT_EQ(gpt2->encode("x<|endoftext|>y"), (std::vector<int64_t>{87, 50256, 88}));
  EXPECT_EQ(gpt2->eos_id(), 50256);
  EXPECT_EQ(gpt2->vocab_size(), 50257);
  const auto llama = optima::load_tokenizer(a / "tokenizers/llama2");
  EXPECT_EQ(llama->encode("Hello"), (std::vector<int64_t>{1, 15043}));        // <s> then "▁Hello"
  EXPECT_EQ(llama->encode(" Hello", false), (std::vector<int64_t>{15043}));   // no second "▁" before a leading space
  EXPECT_EQ(llama->encode("<s>Hello"), (std::vector<int64_t>{1, 1, 10994}));  // legacy=false: no "▁" after <s>
  EXPECT_EQ(llama->bos_id(), 1);
  EXPECT_EQ(llama->eos_id(), 2);
  EXPECT_EQ(llama->vocab_size(), 32000);
  EXPECT_EQ(llama->piece(15043), "\xE2\x96\x81Hello");
  EXPECT_EQ(llama->decode({1, 15043, 29892, 3186, 2}), "Hello, world");
  EXPECT_EQ(llama->describe(), "SentencePiece (tokenizer.model, 32000 tokens, a prefix space)");
}

TEST(Tokenizer, RoundTripByteLevelArbitraryUtf8) {
  const fs::path a = assets_dir();
  std::vector<std::unique_ptr<Tokenizer>> toks;
  toks.push_back(optima::load_tokenizer(data_dir() / "tokenizer" / "tiny_bpe"));
  if (!a.empty() && fs::exists(a / "tokenizers/gpt2")) toks.push_back(optima::load_tokenizer(a / "tokenizers/gpt2"));
  if (!a.empty() && fs::exists(a / "tokenizers/opt")) toks.push_back(optima::load_tokenizer(a / "tokenizers/opt"));
  std::vector<std::string> texts = {"",
                                    " ",
                                    "\n\n",
                                    "Hello, world!",
                                    "  two  spaces  ",
                                    "tab\there\r\nCRLF",
                                    "emoji 😀👍🏽🇩🇪👨‍👩‍👧",
                                    "中文 日本語 한국어",
                                    "naïve café ½ ﬁ",
                                    std::string("nul\0byte", 8),
                                    "\x7f\x01\x1b[0m",
                                    "\xF4\x8F\xBF\xBF max code point",
                                    "\xEF\xBB\xBF BOM"};
  // Random code points from every UTF-8 length class, surrogates excluded.
  std::mt19937 rng(1234);
  for (int n = 0; n < 200; ++n) {
    std::string s;
    const int len = static_cast<int>(rng() % 40);
    for (int k = 0; k < len; ++k) {
      static const uint32_t kMax[] = {0x80, 0x800, 0x10000, 0x110000};
      uint32_t cp = rng() % kMax[rng() % 4];
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = ' ';
      if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
      } else if (cp < 0x800) {
        s += {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
      } else if (cp < 0x10000) {
        s += {static_cast<char>(0xE0 | (cp >> 12)), static_cast<char>(0x80 | ((cp >> 6) & 0x3F)),
              static_cast<char>(0x80 | (cp & 0x3F))};
      } else {
        s += {static_cast<char>(0xF0 | (cp >> 18)), static_cast<char>(0x80 | ((cp >> 12) & 0x3F)),
              static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), static_cast<char>(0x80 | (cp & 0x3F))};
      }
    }
    texts.push_back(s);
  }
  for (const auto& tok : toks) {
    for (const auto& s : texts) {
      ASSERT_EQ(optima::sanitize_utf8(s), s) << "test text must be valid UTF-8";
      EXPECT_EQ(tok->decode(tok->encode(s)), s) << tok->describe();
      EXPECT_EQ(tok->decode(tok->encode(s, false)), s) << tok->describe();
    }
  }
}

TEST(Tokenizer, SanitizeUtf8MatchesPythonReplace) {
  // Expected values from Python: bytes.decode("utf-8", errors="replace").
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(optima::sanitize_utf8("plain ascii"), "plain ascii");
  EXPECT_EQ(optima::sanitize_utf8("caf\xC3\xA9"), "caf\xC3\xA9");
  EXPECT_EQ(optima::sanitize_utf8("a\xFF"
                                  "b"),
            "a" + r + "b");
  EXPECT_EQ(optima::sanitize_utf8("\xC3"), r);      // truncated 2-byte sequence
  EXPECT_EQ(optima::sanitize_utf8("\xE2\x82"), r);  // one maximal subpart -> one U+FFFD
  EXPECT_EQ(optima::sanitize_utf8("\xF0\x9F\x98"
                                  "x"),
            r + "x");
  EXPECT_EQ(optima::sanitize_utf8("\xC0\xAF"), r + r);                  // overlong: two bad bytes
  EXPECT_EQ(optima::sanitize_utf8("\xED\xA0\x80"), r + r + r);          // UTF-16 surrogate
  EXPECT_EQ(optima::sanitize_utf8("\xF4\x90\x80\x80"), r + r + r + r);  // above U+10FFFF
  EXPECT_EQ(optima::sanitize_utf8("\xE0\x80\x80"), r + r + r);          // overlong 3-byte
  EXPECT_EQ(optima::sanitize_utf8("\x80\x80"), r + r);                  // lone continuation bytes
}

TEST(Tokenizer, IllFormedUtf8IsReplacedNotRejected) {
  const auto tok = optima::load_tokenizer(data_dir() / "tokenizer" / "tiny_bpe");
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(tok->encode("a\xFF b\xE2\x82"), tok->encode("a" + r + " b" + r));
  EXPECT_EQ(tok->decode(tok->encode("a\xFF b")), "a" + r + " b");
  // Ids whose bytes stop inside a character decode to U+FFFD, like transformers' errors="replace".
  const std::vector<int64_t> ids = tok->encode("\xF0\x9F\x98\x80", false);  // 😀
  ASSERT_GE(ids.size(), 2u);
  const std::string first = tok->decode({ids.front()});
  EXPECT_NE(first.find(r), std::string::npos) << "an incomplete character must come out as U+FFFD";
  EXPECT_EQ(tok->decode(ids), "\xF0\x9F\x98\x80");
}

TEST(Tokenizer, SentencePieceRoundTripAndIllFormed) {
  REQUIRE_ASSET(assets_dir() / "tokenizers/llama2");
  const auto tok = optima::load_tokenizer(asset_path);
  for (const std::string s : {"Hello world", "emoji 😀 and 中文", "a  b\n\nc", "tab\tx"})
    EXPECT_EQ(tok->decode(tok->encode(s)), s);
  EXPECT_EQ(tok->encode("x\xFFy"), tok->encode("x\xEF\xBF\xBDy"));
}

TEST(Tokenizer, TemplateSuffixAndStringMerges) {
  // A hand-written byte-level tokenizer.json: merges as "a b" strings, BOS and EOS in the template, an added token.
  TempDir tmp;
  nlohmann::json vocab = nlohmann::json::object();
  vocab["a"] = 0;
  vocab["b"] = 1;
  vocab["c"] = 2;
  vocab["Ġ"] = 3;
  vocab["ab"] = 4;
  vocab["abc"] = 5;
  vocab["Ġab"] = 6;
  nlohmann::json j = {
      {"added_tokens",
       {{{"id", 7}, {"content", "[B]"}, {"special", true}}, {{"id", 8}, {"content", "[E]"}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "[B]"}}}}, {{"Sequence", {{"id", "A"}}}}, {{"SpecialToken", {{"id", "[E]"}}}}}},
        {"special_tokens", {{"[B]", {{"id", "[B]"}, {"ids", {7}}}}, {"[E]", {{"id", "[E]"}, {"ids", {8}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"a b", "ab c", "Ġ ab"}}}}};
  write_file(tmp.path / "tokenizer.json", j.dump());
  const auto tok = optima::load_tokenizer(tmp.path);
  EXPECT_EQ(tok->encode("abc ab"), (std::vector<int64_t>{7, 5, 6, 8}));
  EXPECT_EQ(tok->encode("abc ab", false), (std::vector<int64_t>{5, 6}));
  EXPECT_EQ(tok->encode("a[E]b", false), (std::vector<int64_t>{0, 8, 1}));
  EXPECT_EQ(tok->encode("x", false), (std::vector<int64_t>{}));  // not representable, no unk: dropped as HF does
  EXPECT_EQ(tok->decode({7, 5, 6, 8}), "abc ab");
  EXPECT_EQ(tok->bos_id(), 7);
  EXPECT_EQ(tok->eos_id(), std::nullopt);  // no tokenizer_config.json naming it
  EXPECT_EQ(tok->vocab_size(), 9);
  EXPECT_EQ(tok->piece(6), "Ġab");
  EXPECT_EQ(tok->piece(8), "[E]");
  EXPECT_THROW(tok->piece(9), optima::Error);
  EXPECT_THROW(tok->decode({42}), optima::Error);
  EXPECT_EQ(tok->describe(), "byte-level BPE (tokenizer.json, 9 tokens)");
}

TEST(Tokenizer, ConcurrentEncodeIsConsistent) {
  const auto tok = optima::load_tokenizer(data_dir() / "tokenizer" / "tiny_bpe");
  std::string text;
  for (int i = 0; i < 2000; ++i) text += "word" + std::to_string(i % 97) + " and more text, ";
  const auto expect = tok->encode(text);
  std::vector<std::vector<int64_t>> got(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&, t] { got[t] = tok->encode(text); });
  for (auto& th : threads) th.join();
  for (const auto& g : got) EXPECT_EQ(g, expect);
}

// ---- errors name the file ----

// Runs f, expects an optima::Error of kind kInput whose message contains every string of `parts`.
template <typename F>
void expect_input_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const optima::Error& e) {
    EXPECT_EQ(e.kind(), optima::ErrorKind::kInput) << e.what();
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\n  lacks: " << p;
  }
}

TEST(TokenizerErrors, MissingDirectoryAndFiles) {
  TempDir tmp;
  expect_input_error([&] { optima::load_tokenizer(tmp.path / "nope"); }, {(tmp.path / "nope").string(), "not found"});
  expect_input_error([&] { optima::load_tokenizer(tmp.path); }, {tmp.path.string(), "no tokenizer files"});
  write_file(tmp.path / "vocab.json", R"({"a": 0})");
  expect_input_error([&] { optima::load_tokenizer(tmp.path); }, {"merges.txt", "file not found"});
}

TEST(TokenizerErrors, MalformedVocabAndMerges) {
  TempDir tmp;
  write_file(tmp.path / "vocab.json", R"({"a": 0, "b": )");
  write_file(tmp.path / "merges.txt", "#version: 0.2\na b\n");
  expect_input_error([&] { optima::load_tokenizer(tmp.path); }, {"vocab.json", "malformed JSON"});
  write_file(tmp.path / "vocab.json", R"({"a": 0, "b": 1, "ab": 2})");
  write_file(tmp.path / "merges.txt", "#version: 0.2\na b\na c\n");
  expect_input_error([&] { optima::load_tokenizer(tmp.path); }, {"merges.txt: line 3", "not in the vocabulary", "c"});
  write_file(tmp.path / "merges.txt", "#version: 0.2\nab\n");
  expect_input_error([&] { optima::load_tokenizer(tmp.path); }, {"merges.txt: line 2", "bad merge"});
  write_file(tmp.path / "vocab.json", R"({"a": "zero"})");
  expect_input_error([&] { optima::load_tokenizer(tmp.path); }, {"vocab.json", "bad token id"});
}

TEST(TokenizerErrors, UnsupportedTokenizerJsonFeaturesNameTheKey) {
  const fs::path tiny = data_dir() / "tokenizer" / "tiny_bpe" / "tokenizer.json";
  ASSERT_TRUE(fs::exists(tiny)) << tiny;
  const nlohmann::json base = nlohmann::json::parse(slurp(tiny));
  struct Case {
    std::function<void(nlohmann::json&)> edit;
    std::string key;
  };
  const std::vector<Case> cases = {
      {[](auto& j) {
         j["normalizer"] = {{"type", "NFKC"}};
       },
       "tokenizer.json: normalizer"},
      {[](auto& j) { j["model"]["type"] = "WordPiece"; }, "tokenizer.json: model.type"},
      {[](auto& j) { j["model"]["dropout"] = 0.1; }, "tokenizer.json: model.dropout"},
      {[](auto& j) { j["model"].erase("merges"); }, "tokenizer.json: model.merges"},
      {[](auto& j) { j["model"]["merges"][3] = 7; }, "tokenizer.json: model.merges[3]"},
      {[](auto& j) {
         j["model"]["merges"][0] = {"Ġ", "nonexistent"};
       },
       "tokenizer.json: model.merges[0]"},
      {[](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; },
       "tokenizer.json: pre_tokenizer.pretokenizers[0].behavior"},
      {[](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed"; },
       "tokenizer.json: pre_tokenizer.pretokenizers[0].pattern"},
      {[](auto& j) { j["pre_tokenizer"]["pretokenizers"][1]["type"] = "Whitespace"; },
       "tokenizer.json: pre_tokenizer.pretokenizers[1].type"},
      {[](auto& j) {
         j["post_processor"] = {{"type", "RobertaProcessing"}};
       },
       "tokenizer.json: post_processor"},
      {[](auto& j) {
         j["decoder"] = {{"type", "WordPiece"}};
       },
       "tokenizer.json: decoder"},
      {[](auto& j) { j["added_tokens"][0]["single_word"] = true; }, "tokenizer.json: added_tokens[0].single_word"},
  };
  for (const auto& c : cases) {
    TempDir tmp;
    nlohmann::json j = base;
    c.edit(j);
    write_file(tmp.path / "tokenizer.json", j.dump());
    expect_input_error([&] { optima::load_tokenizer(tmp.path); }, {(tmp.path / "tokenizer.json").string(), c.key});
  }
  TempDir tmp;
  write_file(tmp.path / "tokenizer.json", "{ not json");
  expect_input_error([&] { optima::load_tokenizer(tmp.path); }, {"tokenizer.json", "malformed JSON"});
}

TEST(TokenizerErrors, BadConfigAndSentencePieceModel) {
  TempDir tmp;
  fs::copy_file(data_dir() / "tokenizer" / "tiny_bpe" / "tokenizer.json", tmp.path / "tokenizer.json");
  write_file(tmp.path / "tokenizer_config.json", R"({"bos_token": 5})");
  expect_input_error([&] { optima::load_tokenizer(tmp.path); },
                     {"tokenizer_config.json: bos_token", "bad token value"});
  write_file(tmp.path / "tokenizer_config.json",
             R"({"bos_token": {"content": "<|begin_of_text|>"}, "add_bos_token": "yes"})");
  expect_input_error([&] { optima::load_tokenizer(tmp.path); }, {"tokenizer_config.json: add_bos_token"});

  TempDir sp;
  write_file(sp.path / "tokenizer.model", "this is not a protobuf");
  expect_input_error([&] { optima::load_tokenizer(sp.path); }, {"tokenizer.model"});
  const fs::path llama = assets_dir() / "tokenizers/llama2/tokenizer.model";
  if (!assets_dir().empty() && fs::exists(llama)) {
    fs::copy_file(llama, sp.path / "tokenizer.model", fs::copy_options::overwrite_existing);
    write_file(sp.path / "tokenizer_config.json", R"({"bos_token": "<bos-not-there>", "add_bos_token": true})");
    expect_input_error([&] { optima::load_tokenizer(sp.path); },
                       {"tokenizer_config.json: bos_token", "<bos-not-there>"});
    write_file(sp.path / "tokenizer_config.json", R"({"add_bos_token": false, "add_eos_token": true})");
    EXPECT_EQ(optima::load_tokenizer(sp.path)->encode("Hello"), (std::vector<int64_t>{15043, 2}));
    // The same pieces declared a unigram model (a second TrainerSpec with model_type = 1, merged by protobuf).
    write_file(sp.path / "tokenizer.model", slurp(llama) + std::string("\x12\x02\x18\x01", 4));
    expect_input_error([&] { optima::load_tokenizer(sp.path); },
                       {"tokenizer.model", "unsupported SentencePiece model type"});
  }
}

}  // namespace
