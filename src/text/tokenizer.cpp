// The tokenizer factory (picks BPE or SentencePiece from the files of a model directory), the reading of
// tokenizer_config.json / special_tokens_map.json, and helpers shared by both implementations.
#include "optima/text/tokenizer.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <fstream>
#include <functional>
#include <queue>
#include <sstream>

#include "optima/core/error.h"
#include "tokenizer_internal.h"

namespace optima {

namespace fs = std::filesystem;
using nlohmann::json;

std::string sanitize_utf8(std::string_view s) {
  static constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD
  std::string out;
  out.reserve(s.size());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      out.push_back(static_cast<char>(b));
      ++i;
      continue;
    }
    // Unicode Table 3-7 (well-formed UTF-8): the length of the sequence and the allowed range of its second byte.
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
      len = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
      len = 3;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;  // no UTF-16 surrogates
    } else if (b >= 0xF0 && b <= 0xF4) {
      len = 4;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
    }
    if (len == 0) {  // a continuation byte or a byte that never starts a sequence
      out += kReplacement;
      ++i;
      continue;
    }
    // Consume the longest prefix that could still start a well-formed sequence (the "maximal subpart"); replace it
    // as a whole when the sequence is cut short.
    size_t k = 1;
    for (; k < len && i + k < n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      const unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
      if (c < l || c > h) break;
    }
    if (k == len) {
      out.append(s.data() + i, len);
    } else {
      out += kReplacement;
    }
    i += k;
  }
  return out;
}

namespace text_detail {

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    fail_input(path.string(), "cannot open file", "a readable file", fs::exists(path) ? "unreadable" : "missing");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail_input(path.string(), "read failed");
  return ss.str();
}

json read_json(const fs::path& path) {
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e400
    fail_input(path.string(), "malformed JSON", "valid JSON", e.what());
  }
}

namespace {

// A special token may be written as "<s>" or as {"content": "<s>", ...} (an AddedToken dump); null means unset.
std::optional<std::string> token_string(const json& v, const fs::path& file, const std::string& key) {
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  fail_input(fmt::format("{}: {}", file.string(), key), "bad token value", "a string or {\"content\": string}",
             v.dump().substr(0, 80));
}

std::optional<bool> optional_bool(const json& j, const char* key, const fs::path& file) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  if (!j[key].is_boolean())
    fail_input(fmt::format("{}: {}", file.string(), key), "bad value", "true or false", j[key].dump().substr(0, 80));
  return j[key].get<bool>();
}

void read_special_tokens(const json& j, const fs::path& file, TokenizerConfig& c) {
  if (!j.is_object()) fail_input(file.string(), "malformed file", "a JSON object", j.type_name());
  auto take = [&](const char* key, std::optional<std::string>& slot) {
    if (j.contains(key)) {
      if (auto v = token_string(j[key], file, key)) slot = v;
    }
  };
  take("bos_token", c.bos_token);
  take("eos_token", c.eos_token);
  take("unk_token", c.unk_token);
  take("pad_token", c.pad_token);
  if (j.contains("additional_special_tokens") && j["additional_special_tokens"].is_array()) {
    const auto& arr = j["additional_special_tokens"];
    for (size_t i = 0; i < arr.size(); ++i) {
      if (auto v = token_string(arr[i], file, fmt::format("additional_special_tokens[{}]", i)))
        c.additional_special_tokens.push_back(*v);
    }
  }
}

}  // namespace

void apply_tokenizer_config(const json& j, const fs::path& config_path, TokenizerConfig& c) {
  read_special_tokens(j, config_path, c);
  c.add_bos_token = optional_bool(j, "add_bos_token", config_path);
  c.add_eos_token = optional_bool(j, "add_eos_token", config_path);
  c.legacy = optional_bool(j, "legacy", config_path);
  c.add_prefix_space = optional_bool(j, "add_prefix_space", config_path);
  if (j.contains("added_tokens_decoder") && !j["added_tokens_decoder"].is_null()) {
    const json& d = j["added_tokens_decoder"];
    if (!d.is_object())
      fail_input(config_path.string() + ": added_tokens_decoder", "bad value", "an object", d.type_name());
    for (const auto& [key, v] : d.items()) {
      const std::string where = fmt::format("{}: added_tokens_decoder.{}", config_path.string(), key);
      AddedToken t;
      try {
        size_t used = 0;
        t.id = std::stoll(key, &used);
        if (used != key.size() || t.id < 0) throw std::invalid_argument(key);
      } catch (const std::exception&) {
        fail_input(where, "bad token id", "a non-negative integer key", key);
      }
      if (!v.is_object() || !v.contains("content") || !v["content"].is_string())
        fail_input(where, "bad added token", "an object with a string \"content\"", v.dump().substr(0, 80));
      t.content = v["content"].get<std::string>();
      // optional_bool names the file and key of a flag that is not true, false or null.
      const fs::path entry = fmt::format("{}: added_tokens_decoder.{}", config_path.string(), key);
      t.special = optional_bool(v, "special", entry).value_or(true);
      t.lstrip = optional_bool(v, "lstrip", entry).value_or(false);
      t.rstrip = optional_bool(v, "rstrip", entry).value_or(false);
      if (optional_bool(v, "single_word", entry).value_or(false))
        fail_input(where, "unsupported added-token option", "single_word false", "true");
      c.added_tokens.push_back(std::move(t));
    }
  }
}

void apply_special_tokens_map(const json& j, const fs::path& map_path, TokenizerConfig& c) {
  read_special_tokens(j, map_path, c);
}

TokenizerConfig read_tokenizer_config(const fs::path& dir) {
  TokenizerConfig c;
  c.dir = dir;
  const fs::path config_path = dir / "tokenizer_config.json";
  if (fs::exists(config_path)) apply_tokenizer_config(read_json(config_path), config_path, c);
  // special_tokens_map.json is what save_pretrained() writes for the special tokens; transformers lets it override.
  const fs::path map_path = dir / "special_tokens_map.json";
  if (fs::exists(map_path)) apply_special_tokens_map(read_json(map_path), map_path, c);
  return c;
}

void AddedTokenSplitter::add(const AddedToken& token) {
  if (token.content.empty()) return;
  for (const auto& t : tokens_) {
    if (t.content == token.content) return;  // the first definition wins
  }
  tokens_.push_back(token);
  first_byte_[static_cast<unsigned char>(token.content[0])] = true;
}

const AddedToken* AddedTokenSplitter::find_id(int64_t id) const {
  for (const auto& t : tokens_) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

namespace {
bool is_ascii_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
}  // namespace

void AddedTokenSplitter::split(std::string_view text, std::vector<Segment>& out) const {
  size_t seg_start = 0;
  size_t i = 0;
  while (i < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    const AddedToken* best = nullptr;
    for (const auto& t : tokens_) {
      if (t.content.size() > (best ? best->content.size() : 0) && text.compare(i, t.content.size(), t.content) == 0)
        best = &t;
    }
    if (!best) {
      ++i;
      continue;
    }
    size_t match_start = i, match_end = i + best->content.size();
    if (best->lstrip) {
      while (match_start > seg_start && is_ascii_space(text[match_start - 1])) --match_start;
    }
    if (best->rstrip) {
      while (match_end < text.size() && is_ascii_space(text[match_end])) ++match_end;
    }
    if (match_start > seg_start) out.push_back({text.substr(seg_start, match_start - seg_start), seg_start, -1});
    out.push_back({std::string_view(), match_start, best->id});
    seg_start = i = match_end;
  }
  if (seg_start < text.size()) out.push_back({text.substr(seg_start), seg_start, -1});
}

std::vector<int32_t> bpe_merge(const std::vector<int32_t>& symbols, const MergeTable& merges) {
  struct Sym {
    int32_t id, prev, next;
    bool dead;
  };
  const int32_t n = static_cast<int32_t>(symbols.size());
  std::vector<Sym> syms(symbols.size());
  for (int32_t i = 0; i < n; ++i) syms[i] = {symbols[i], i - 1, i + 1 < n ? i + 1 : -1, false};
  struct Cand {
    int32_t rank, pos, left, right, merged;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> queue;
  auto consider = [&](int32_t pos) {
    if (pos < 0) return;
    const int32_t nx = syms[pos].next;
    if (nx < 0) return;
    auto it = merges.find(pair_key(syms[pos].id, syms[nx].id));
    if (it != merges.end()) queue.push({it->second.first, pos, syms[pos].id, syms[nx].id, it->second.second});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!queue.empty()) {
    const Cand c = queue.top();
    queue.pop();
    // Entries made stale by earlier merges no longer describe the pair at `pos`; skip them.
    if (syms[c.pos].dead || syms[c.pos].id != c.left) continue;
    const int32_t nx = syms[c.pos].next;
    if (nx < 0 || syms[nx].id != c.right) continue;
    syms[c.pos].id = c.merged;
    syms[nx].dead = true;
    syms[c.pos].next = syms[nx].next;
    if (syms[nx].next >= 0) syms[syms[nx].next].prev = c.pos;
    consider(syms[c.pos].prev);
    consider(c.pos);
  }
  std::vector<int32_t> ids;
  for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = syms[i].next) ids.push_back(syms[i].id);
  return ids;
}

}  // namespace text_detail

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& dir) {
  using namespace text_detail;
  if (!fs::is_directory(dir)) fail_input(dir.string(), "tokenizer directory not found", "a directory", "missing");
  const TokenizerConfig config = read_tokenizer_config(dir);
  const fs::path tj = dir / "tokenizer.json", vocab = dir / "vocab.json", merges = dir / "merges.txt",
                 sp = dir / "tokenizer.model";
  if (fs::exists(tj)) {
    const json j = read_json(tj);
    // Llama-2 style repositories carry a SentencePiece-flavoured tokenizer.json next to tokenizer.model; the
    // SentencePiece library reads the latter exactly.
    if (!is_byte_level_tokenizer_json(j) && fs::exists(sp)) return make_sentencepiece(sp, config);
    return make_bpe_from_tokenizer_json(tj, j, config);
  }
  if (fs::exists(vocab) || fs::exists(merges)) {
    if (fs::exists(vocab) && fs::exists(merges)) return make_bpe_from_vocab_merges(vocab, merges, config);
    if (!fs::exists(sp)) {
      const fs::path& missing = fs::exists(vocab) ? merges : vocab;
      fail_input(missing.string(), "file not found", "vocab.json and merges.txt together", "only one of them");
    }
  }
  if (fs::exists(sp)) return make_sentencepiece(sp, config);
  fail_input(dir.string(), "no tokenizer files", "tokenizer.json, vocab.json + merges.txt, or tokenizer.model",
             "none of them");
}

void check_tokenizer_fits(const Tokenizer& tokenizer, const fs::path& tokenizer_dir, int64_t model_vocab,
                          const fs::path& config_path) {
  const int64_t size = tokenizer.vocab_size();
  if (size > model_vocab)
    fail_input(
        tokenizer_dir.string(),
        fmt::format(
            "the tokenizer ({}) does not fit the model's vocabulary: its ids reach {} but the embedding has {} rows "
            "(vocab_size in {}); is it the model's own tokenizer?",
            tokenizer.describe(), size - 1, model_vocab, config_path.string()),
        fmt::format("at most {} tokens", model_vocab), fmt::format("{} tokens", size));
  if (static_cast<double>(size) < 0.9 * static_cast<double>(model_vocab))
    spdlog::warn(
        "{}: the tokenizer has {} tokens but the model's embedding has {} rows (vocab_size in {}); a model pads its "
        "embedding by a few rows, so this is probably another model's tokenizer",
        tokenizer_dir.string(), size, model_vocab, config_path.string());
}

std::unique_ptr<Tokenizer> load_model_tokenizer(const fs::path& model_dir, const fs::path& tokenizer_dir,
                                                int64_t model_vocab, const fs::path& config_path) {
  const fs::path dir = tokenizer_dir.empty() ? model_dir : tokenizer_dir;
  auto tokenizer = load_tokenizer(dir);
  check_tokenizer_fits(*tokenizer, dir, model_vocab, config_path);
  return tokenizer;
}

}  // namespace optima
