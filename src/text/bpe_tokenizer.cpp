// Byte-level BPE (GPT-2, OPT, LLaMA-3-style tokenizer.json), written to give the same ids as Hugging Face
// `tokenizers`: added tokens are split out of the raw text first, the rest is pre-tokenized with a PCRE2 regex, each
// pre-token is mapped through GPT-2's byte-to-unicode table and merged by merge rank.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "optima/core/error.h"
#include "tokenizer_internal.h"

namespace optima::text_detail {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// GPT-2's pre-tokenizer (the one `tokenizers`' ByteLevel pre-tokenizer uses when use_regex is true).
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string utf8_encode(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

// Decodes the code point at s[i] (s is valid UTF-8 or at least starts a sequence) and advances i.
uint32_t utf8_next(std::string_view s, size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  size_t len = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  if (i + len > s.size()) len = s.size() - i;
  uint32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return cp;
}

// GPT-2's reversible map from bytes to printable code points, so that every byte sequence is a string of
// "visible" characters (space -> 'Ġ', newline -> 'Ċ').
struct ByteUnicode {
  std::array<std::string, 256> byte_to_utf8;
  std::unordered_map<uint32_t, uint8_t> cp_to_byte;
  ByteUnicode() {
    std::array<bool, 256> direct{};
    for (int b = 0; b < 256; ++b) direct[b] = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const uint32_t cp = direct[b] ? static_cast<uint32_t>(b) : next++;
      byte_to_utf8[b] = utf8_encode(cp);
      cp_to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};

const ByteUnicode& byte_unicode() {
  static const ByteUnicode table;
  return table;
}

// A compiled PCRE2 pattern (UTF + Unicode properties, JIT-compiled when the platform allows).
class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const std::string& where) {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    // PCRE2 refuses PCRE2_UCP together with PCRE2_LITERAL ("invalid option bits"); a literal has no classes anyway.
    const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &err, &err_offset,
                          nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      fail_input(where, "cannot compile pre-tokenizer regex", "a PCRE2-compatible pattern",
                 fmt::format("{} at offset {}", reinterpret_cast<const char*>(msg), err_offset));
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls f(start, end) for the matches and, as `tokenizers`' "Isolated" split behaviour does, for the gaps between
  // them, in order. `s` must be valid UTF-8 (checked once by the caller), so PCRE2's per-call check is skipped.
  template <typename F>
  void split(std::string_view s, F&& f) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    if (!md) throw std::bad_alloc();
    const auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    size_t pos = 0, emitted = 0;
    while (pos < s.size()) {
      int rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {  // pathological input: the interpreter keeps its stack on the heap
        rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
      }
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        pcre2_match_data_free(md);
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof(msg));
        fail_input("tokenizer pre-tokenizer regex", "match failed", "a successful match",
                   reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t start = ov[0], end = ov[1];
      if (start > emitted) f(emitted, start);
      if (end > start) {
        f(start, end);
        emitted = pos = end;
      } else {  // an empty match: step over one character so the loop always advances
        pos = start + 1;
        while (pos < s.size() && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) ++pos;
      }
    }
    if (emitted < s.size()) f(emitted, s.size());
    pcre2_match_data_free(md);
  }

  bool jit() const { return jit_; }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

class ByteLevelBpe final : public Tokenizer {
 public:
  // Where the tokenizer came from, for describe() and error messages.
  std::string source_;
  std::string where_;

  std::unordered_map<std::string, int32_t> vocab_;  // piece (byte-to-unicode alphabet) -> id
  std::vector<std::string> pieces_;                 // id -> piece ("" for ids not in the vocabulary)
  std::vector<std::string> piece_bytes_;            // id -> the raw bytes the piece stands for
  MergeTable merges_;
  std::array<int32_t, 256> byte_ids_{};  // id of the single-byte piece, -1 if the vocabulary lacks it
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  bool add_prefix_space_ = false;
  std::vector<std::unique_ptr<Regex>> splits_;  // applied in order to each plain segment

  AddedTokenSplitter added_;
  std::vector<int64_t> prefix_, suffix_;  // template tokens around the text when add_special is true
  std::optional<int64_t> bos_, eos_;

  // Per-pre-token cache of merge results; text repeats words constantly, so this is most of the speed.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
  static constexpr size_t kCacheLimit = 1 << 20;
  static constexpr size_t kCacheMaxKey = 256;

  void set_vocab(std::unordered_map<std::string, int32_t> vocab) {
    vocab_ = std::move(vocab);
    int32_t max_id = -1;
    for (const auto& [p, id] : vocab_) max_id = std::max(max_id, id);
    pieces_.assign(static_cast<size_t>(max_id) + 1, std::string());
    piece_bytes_.assign(pieces_.size(), std::string());
    const auto& bu = byte_unicode();
    for (const auto& [p, id] : vocab_) {
      pieces_[id] = p;
      std::string bytes;
      for (size_t i = 0; i < p.size();) {
        const size_t start = i;
        const uint32_t cp = utf8_next(p, i);
        auto it = bu.cp_to_byte.find(cp);
        if (it != bu.cp_to_byte.end()) {
          bytes.push_back(static_cast<char>(it->second));
        } else {
          bytes.append(p, start, i - start);  // not from the byte alphabet (e.g. a special token): keep as text
        }
      }
      piece_bytes_[id] = std::move(bytes);
    }
    for (int b = 0; b < 256; ++b) {
      auto it = vocab_.find(bu.byte_to_utf8[b]);
      byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
    }
  }

  int32_t id_of(const std::string& piece, const std::string& where) const {
    auto it = vocab_.find(piece);
    if (it == vocab_.end())
      fail_input(where, "merge uses a token that is not in the vocabulary", "a known token", piece);
    return it->second;
  }

  void add_merge(const std::string& a, const std::string& b, int32_t rank, const std::string& where) {
    const int32_t ia = id_of(a, where), ib = id_of(b, where), merged = id_of(a + b, where);
    merges_[pair_key(ia, ib)] = {rank, merged};  // a repeated pair takes its later rank, as `tokenizers` does
  }

  // Whether decode() and piece() accept `id`: a vocabulary entry or an added token.
  bool known_id(int64_t id) const {
    return added_.find_id(id) != nullptr ||
           (id >= 0 && id < static_cast<int64_t>(pieces_.size()) && !pieces_[static_cast<size_t>(id)].empty());
  }

  std::optional<int64_t> lookup(const std::string& token) const {
    for (const auto& t : added_.tokens()) {
      if (t.content == token) return t.id;
    }
    auto it = vocab_.find(token);
    if (it != vocab_.end()) return it->second;
    return std::nullopt;
  }

  // Merges the bytes of one pre-token into ids.
  void bpe_word(std::string_view word, std::vector<int64_t>& out) const {
    if (word.size() == 1) {
      push_byte(static_cast<unsigned char>(word[0]), out);
      return;
    }
    const bool cacheable = word.size() <= kCacheMaxKey;
    std::string key;
    if (cacheable) {
      key.assign(word);
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto it = cache_.find(key);
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> ids = merge(word);
    out.insert(out.end(), ids.begin(), ids.end());
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      if (cache_.size() >= kCacheLimit) cache_.clear();
      cache_.emplace(std::move(key), std::move(ids));
    }
  }

  void push_byte(unsigned char b, std::vector<int64_t>& out) const {
    if (byte_ids_[b] >= 0) {
      out.push_back(byte_ids_[b]);
    } else if (unk_id_) {
      if (!(fuse_unk_ && !out.empty() && out.back() == *unk_id_)) out.push_back(*unk_id_);
    }  // else: dropped, as `tokenizers` drops characters it cannot represent when there is no unk token
  }

  std::vector<int32_t> merge(std::string_view word) const {
    const auto& bu = byte_unicode();
    if (ignore_merges_) {  // LLaMA-3 style: a pre-token that is itself in the vocabulary is taken whole
      std::string mapped;
      for (char c : word) mapped += bu.byte_to_utf8[static_cast<unsigned char>(c)];
      auto it = vocab_.find(mapped);
      if (it != vocab_.end()) return {it->second};
    }
    std::vector<int32_t> syms;
    syms.reserve(word.size());
    for (char c : word) {
      const int32_t id = byte_ids_[static_cast<unsigned char>(c)];
      if (id >= 0) {
        syms.push_back(id);
      } else if (unk_id_ && !(fuse_unk_ && !syms.empty() && syms.back() == *unk_id_)) {
        syms.push_back(*unk_id_);
      }
    }
    return bpe_merge(syms, merges_);
  }

  // Applies splits_[level..] to `piece` and merges the resulting pre-tokens.
  void pretokenize(std::string_view piece, size_t level, std::vector<int64_t>& out) const {
    if (level == splits_.size()) {
      bpe_word(piece, out);
      return;
    }
    splits_[level]->split(piece, [&](size_t a, size_t b) { pretokenize(piece.substr(a, b - a), level + 1, out); });
  }

  std::vector<int64_t> encode(std::string_view text, bool add_special) const override {
    const std::string clean = sanitize_utf8(text);
    std::vector<Segment> segments;
    if (added_.empty()) {
      if (!clean.empty()) segments.push_back({clean, 0, -1});
    } else {
      added_.split(clean, segments);
    }
    std::vector<int64_t> out;
    out.reserve(clean.size() / 3 + prefix_.size() + suffix_.size() + 4);
    if (add_special) out.insert(out.end(), prefix_.begin(), prefix_.end());
    std::string prefixed;
    for (const Segment& seg : segments) {
      if (seg.token_id >= 0) {
        out.push_back(seg.token_id);
        continue;
      }
      std::string_view piece = seg.text;
      if (add_prefix_space_ && piece.front() != ' ') {  // ByteLevel(add_prefix_space): every segment gets one
        prefixed = " ";
        prefixed += piece;
        piece = prefixed;
      }
      pretokenize(piece, 0, out);
    }
    if (add_special) out.insert(out.end(), suffix_.begin(), suffix_.end());
    return out;
  }

  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string bytes;
    for (int64_t id : ids) {
      if (const AddedToken* t = added_.find_id(id)) {
        if (!t->special) bytes += t->content;
        continue;
      }
      if (id < 0 || id >= static_cast<int64_t>(pieces_.size()) || pieces_[id].empty())
        fail_input(where_, "cannot decode token id", fmt::format("an id in [0, {})", vocab_size()), std::to_string(id));
      bytes += piece_bytes_[id];
    }
    return sanitize_utf8(bytes);
  }

  std::string piece(int64_t id) const override {
    if (const AddedToken* t = added_.find_id(id)) return t->content;
    if (id < 0 || id >= static_cast<int64_t>(pieces_.size()) || pieces_[id].empty())
      fail_input(where_, "unknown token id", fmt::format("an id in [0, {})", vocab_size()), std::to_string(id));
    return pieces_[id];
  }

  int64_t vocab_size() const override {
    int64_t n = static_cast<int64_t>(pieces_.size());
    for (const auto& t : added_.tokens()) n = std::max(n, t.id + 1);
    return n;
  }
  std::optional<int64_t> bos_id() const override { return bos_; }
  std::optional<int64_t> eos_id() const override { return eos_; }
  std::string describe() const override {
    return fmt::format("byte-level BPE ({}, {} tokens{})", source_, vocab_size(),
                       splits_.empty() || splits_[0]->jit() ? "" : ", regex without JIT");
  }
};

// ---- tokenizer.json ----

std::string key_where(const fs::path& file, const std::string& key) {
  return fmt::format("{}: {}", file.string(), key);
}

const json& require(const json& j, const char* key, const fs::path& file, const std::string& prefix) {
  if (!j.is_object() || !j.contains(key)) fail_input(key_where(file, prefix + key), "missing key", "present", "absent");
  return j[key];
}

std::string get_string(const json& j, const fs::path& file, const std::string& key) {
  if (!j.is_string()) fail_input(key_where(file, key), "bad value", "a string", j.type_name());
  return j.get<std::string>();
}

bool get_bool(const json& parent, const char* key, bool fallback, const fs::path& file, const std::string& prefix) {
  if (!parent.contains(key) || parent[key].is_null()) return fallback;
  if (!parent[key].is_boolean())
    fail_input(key_where(file, prefix + key), "bad value", "true or false", parent[key].dump());
  return parent[key].get<bool>();
}

void unsupported(const fs::path& file, const std::string& key, const std::string& expected, const json& found) {
  fail_input(key_where(file, key), "unsupported tokenizer feature", expected, found.dump().substr(0, 120));
}

// Reads one ByteLevel pre-tokenizer; returns whether it adds the GPT-2 regex, and its add_prefix_space.
std::pair<bool, bool> read_byte_level(const json& p, const fs::path& file, const std::string& key) {
  return {get_bool(p, "use_regex", true, file, key + "."), get_bool(p, "add_prefix_space", true, file, key + ".")};
}

void read_pre_tokenizer(const json& pt, const fs::path& file, ByteLevelBpe& t) {
  auto add_split = [&](const json& p, const std::string& key) {
    const json& pattern = require(p, "pattern", file, key + ".");
    std::string re;
    bool literal = false;
    if (pattern.contains("Regex")) {
      re = get_string(pattern["Regex"], file, key + ".pattern.Regex");
    } else if (pattern.contains("String")) {
      re = get_string(pattern["String"], file, key + ".pattern.String");
      literal = true;
    } else {
      unsupported(file, key + ".pattern", "{\"Regex\": ...} or {\"String\": ...}", pattern);
    }
    const std::string behavior = p.value("behavior", std::string("Isolated"));
    if (behavior != "Isolated") unsupported(file, key + ".behavior", "\"Isolated\"", p["behavior"]);
    if (get_bool(p, "invert", false, file, key + ".")) unsupported(file, key + ".invert", "false", p["invert"]);
    t.splits_.push_back(std::make_unique<Regex>(re, literal, key_where(file, key + ".pattern")));
  };
  bool saw_byte_level = false;
  auto add_byte_level = [&](const json& p, const std::string& key, bool first) {
    const auto [use_regex, prefix] = read_byte_level(p, file, key);
    if (prefix) {
      // Inside a Sequence, ByteLevel would prefix every piece an earlier Split made; only the plain case is
      // implemented.
      if (!first) unsupported(file, key + ".add_prefix_space", "false after a Split", p["add_prefix_space"]);
      t.add_prefix_space_ = true;
    }
    if (use_regex) t.splits_.push_back(std::make_unique<Regex>(kGpt2Pattern, false, key_where(file, key)));
    saw_byte_level = true;
  };
  const std::string type = pt.is_object() ? pt.value("type", std::string()) : std::string();
  if (type == "ByteLevel") {
    add_byte_level(pt, "pre_tokenizer", true);
  } else if (type == "Sequence") {
    const json& list = require(pt, "pretokenizers", file, "pre_tokenizer.");
    if (!list.is_array()) unsupported(file, "pre_tokenizer.pretokenizers", "an array", list);
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string key = fmt::format("pre_tokenizer.pretokenizers[{}]", i);
      const std::string ptype = list[i].is_object() ? list[i].value("type", std::string()) : std::string();
      if (ptype == "Split") {
        add_split(list[i], key);
      } else if (ptype == "ByteLevel") {
        add_byte_level(list[i], key, i == 0);
      } else {
        unsupported(file, key + ".type", "\"Split\" or \"ByteLevel\"",
                    list[i].is_object() ? list[i].value("type", json()) : list[i]);
      }
    }
  } else {
    unsupported(file, "pre_tokenizer", "a ByteLevel pre-tokenizer or a Sequence of Split and ByteLevel", pt);
  }
  if (!saw_byte_level) unsupported(file, "pre_tokenizer", "a ByteLevel step", pt);
}

// TemplateProcessing "single": special tokens before $A go to prefix_, after it to suffix_.
void read_template(const json& tp, const fs::path& file, const std::string& key, ByteLevelBpe& t) {
  const json& single = require(tp, "single", file, key + ".");
  if (!single.is_array()) unsupported(file, key + ".single", "an array", single);
  const json& specials = tp.contains("special_tokens") ? tp["special_tokens"] : json::object();
  bool seen_sequence = false;
  t.prefix_.clear();
  t.suffix_.clear();
  for (size_t i = 0; i < single.size(); ++i) {
    const json& item = single[i];
    const std::string ikey = fmt::format("{}.single[{}]", key, i);
    if (item.contains("Sequence")) {
      const std::string id = item["Sequence"].value("id", std::string());
      if (id != "A" || seen_sequence) unsupported(file, ikey + ".Sequence.id", "one \"A\"", item["Sequence"]);
      seen_sequence = true;
    } else if (item.contains("SpecialToken")) {
      const std::string name = get_string(require(item["SpecialToken"], "id", file, ikey + ".SpecialToken."), file,
                                          ikey + ".SpecialToken.id");
      std::vector<int64_t> ids;
      if (specials.contains(name) && specials[name].contains("ids") && specials[name]["ids"].is_array()) {
        const std::string ids_key = fmt::format("{}.special_tokens.{}.ids", key, name);
        for (const auto& v : specials[name]["ids"]) {
          if (!v.is_number_integer()) unsupported(file, ids_key, "integers", v);
          // An id the vocabulary and the added tokens lack would reach the model (past its embedding rows, or as a
          // token decode() cannot spell).
          if (!t.known_id(v.get<int64_t>()))
            fail_input(key_where(file, ids_key), "template token id is not defined",
                       "an id of the vocabulary or of added_tokens", v.dump());
          ids.push_back(v.get<int64_t>());
        }
      } else if (auto id = t.lookup(name)) {
        ids.push_back(*id);
      } else {
        fail_input(key_where(file, ikey + ".SpecialToken.id"), "template token is not defined", "a known token", name);
      }
      auto& dst = seen_sequence ? t.suffix_ : t.prefix_;
      dst.insert(dst.end(), ids.begin(), ids.end());
    } else {
      unsupported(file, ikey, "{\"SpecialToken\": ...} or {\"Sequence\": ...}", item);
    }
  }
  if (!seen_sequence) unsupported(file, key + ".single", "a template containing $A", single);
}

void read_post_processor(const json& pp, const fs::path& file, const std::string& key, ByteLevelBpe& t) {
  if (pp.is_null()) return;
  const std::string type = pp.is_object() ? pp.value("type", std::string()) : std::string();
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (type == "TemplateProcessing") {
    read_template(pp, file, key, t);
  } else if (type == "Sequence") {
    const json& list = require(pp, "processors", file, key + ".");
    for (size_t i = 0; i < list.size(); ++i)
      read_post_processor(list[i], file, fmt::format("{}.processors[{}]", key, i), t);
  } else {
    unsupported(file, key, "null, ByteLevel, TemplateProcessing or a Sequence of them", pp);
  }
}

std::unordered_map<std::string, int32_t> read_vocab_object(const json& v, const fs::path& file,
                                                           const std::string& key) {
  if (!v.is_object()) fail_input(key_where(file, key), "bad vocabulary", "an object of token -> id", v.type_name());
  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(v.size());
  for (const auto& [piece, id] : v.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (int64_t{1} << 31))
      fail_input(key_where(file, fmt::format("{}.{}", key, piece)), "bad token id", "a non-negative integer",
                 id.dump());
    vocab.emplace(piece, id.get<int32_t>());
  }
  if (vocab.empty()) fail_input(key_where(file, key), "empty vocabulary", "at least one token", "none");
  return vocab;
}

// The special tokens tokenizer_config.json names (bos/eos/unk/pad and additional ones) are matched in the text and
// skipped by decode(), as transformers does; returns nothing when a token is not in the vocabulary.
void add_config_specials(const TokenizerConfig& c, ByteLevelBpe& t) {
  std::vector<std::string> names;
  for (const auto* o : {&c.bos_token, &c.eos_token, &c.unk_token, &c.pad_token}) {
    if (*o) names.push_back(**o);
  }
  names.insert(names.end(), c.additional_special_tokens.begin(), c.additional_special_tokens.end());
  for (const auto& name : names) {
    if (auto id = t.lookup(name)) t.added_.add({name, *id, true, false, false});
  }
  for (const auto& a : c.added_tokens) t.added_.add(a);
}

std::optional<int64_t> config_token_id(const std::optional<std::string>& name, const char* key,
                                       const TokenizerConfig& c, const ByteLevelBpe& t, bool required) {
  if (!name) return std::nullopt;
  auto id = t.lookup(*name);
  if (!id && required)
    fail_input(key_where(c.dir / "tokenizer_config.json", key), "token is not in the vocabulary", "a known token",
               *name);
  return id;
}

}  // namespace

bool is_byte_level_tokenizer_json(const json& j) {
  if (!j.is_object() || !j.contains("pre_tokenizer") || !j["pre_tokenizer"].is_object()) return false;
  const json& pt = j["pre_tokenizer"];
  const std::string type = pt.value("type", std::string());
  if (type == "ByteLevel") return true;
  if (type == "Sequence" && pt.contains("pretokenizers") && pt["pretokenizers"].is_array()) {
    for (const auto& p : pt["pretokenizers"]) {
      if (p.is_object() && p.value("type", std::string()) == "ByteLevel") return true;
    }
  }
  return false;
}

std::unique_ptr<Tokenizer> make_bpe_from_tokenizer_json(const fs::path& file, const json& j,
                                                        const TokenizerConfig& config) {
  auto t = std::make_unique<ByteLevelBpe>();
  t->source_ = "tokenizer.json";
  t->where_ = file.string();
  if (!j.is_object()) fail_input(file.string(), "malformed tokenizer.json", "a JSON object", j.type_name());
  if (j.contains("normalizer") && !j["normalizer"].is_null())
    unsupported(file, "normalizer", "null (byte-level BPE without a normalizer)", j["normalizer"]);
  if (j.contains("decoder") && !j["decoder"].is_null() && j["decoder"].value("type", std::string()) != "ByteLevel")
    unsupported(file, "decoder", "ByteLevel", j["decoder"]);

  const json& model = require(j, "model", file, "");
  if (model.contains("type") && model["type"] != "BPE") unsupported(file, "model.type", "\"BPE\"", model["type"]);
  if (model.contains("dropout") && !model["dropout"].is_null() &&
      !(model["dropout"].is_number() && model["dropout"].get<double>() == 0.0))
    unsupported(file, "model.dropout", "null", model["dropout"]);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() &&
        !(model[key].is_string() && model[key].get_ref<const std::string&>().empty()))
      unsupported(file, std::string("model.") + key, "null or \"\"", model[key]);
  }
  if (get_bool(model, "byte_fallback", false, file, "model."))
    unsupported(file, "model.byte_fallback", "false", model["byte_fallback"]);
  t->fuse_unk_ = get_bool(model, "fuse_unk", false, file, "model.");
  t->ignore_merges_ = get_bool(model, "ignore_merges", false, file, "model.");
  t->set_vocab(read_vocab_object(require(model, "vocab", file, "model."), file, "model.vocab"));
  if (model.contains("unk_token") && !model["unk_token"].is_null()) {
    const std::string unk = get_string(model["unk_token"], file, "model.unk_token");
    auto it = t->vocab_.find(unk);
    if (it == t->vocab_.end())
      fail_input(key_where(file, "model.unk_token"), "token is not in the vocabulary", "a known token", unk);
    t->unk_id_ = it->second;
  }

  const json& merges = require(model, "merges", file, "model.");
  if (!merges.is_array()) fail_input(key_where(file, "model.merges"), "bad merges", "an array", merges.type_name());
  t->merges_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    const std::string where = key_where(file, fmt::format("model.merges[{}]", i));
    if (m.is_string()) {  // "a b"
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        fail_input(where, "bad merge", "\"left right\"", s);
      t->add_merge(s.substr(0, sp), s.substr(sp + 1), static_cast<int32_t>(i), where);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["a", "b"]
      t->add_merge(m[0].get<std::string>(), m[1].get<std::string>(), static_cast<int32_t>(i), where);
    } else {
      fail_input(where, "bad merge", "\"left right\" or [\"left\", \"right\"]", m.dump().substr(0, 80));
    }
  }

  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    const json& list = j["added_tokens"];
    if (!list.is_array()) fail_input(key_where(file, "added_tokens"), "bad value", "an array", list.type_name());
    for (size_t i = 0; i < list.size(); ++i) {
      const json& a = list[i];
      const std::string key = fmt::format("added_tokens[{}]", i);
      AddedToken tok;
      tok.content = get_string(require(a, "content", file, key + "."), file, key + ".content");
      const json& id = require(a, "id", file, key + ".");
      if (!id.is_number_integer() || id.get<int64_t>() < 0)
        fail_input(key_where(file, key + ".id"), "bad token id", "a non-negative integer", id.dump());
      tok.id = id.get<int64_t>();
      tok.special = get_bool(a, "special", false, file, key + ".");
      tok.lstrip = get_bool(a, "lstrip", false, file, key + ".");
      tok.rstrip = get_bool(a, "rstrip", false, file, key + ".");
      if (get_bool(a, "single_word", false, file, key + "."))
        unsupported(file, key + ".single_word", "false", a["single_word"]);
      t->added_.add(tok);
    }
  }
  add_config_specials(config, *t);

  read_pre_tokenizer(require(j, "pre_tokenizer", file, ""), file, *t);
  if (j.contains("post_processor")) read_post_processor(j["post_processor"], file, "post_processor", *t);

  t->bos_ = config_token_id(config.bos_token, "bos_token", config, *t, false);
  if (!t->bos_ && !t->prefix_.empty()) t->bos_ = t->prefix_.front();
  t->eos_ = config_token_id(config.eos_token, "eos_token", config, *t, false);
  return t;
}

// ---- vocab.json + merges.txt (GPT-2 / OPT layout; transformers' GPT2Tokenizer) ----

std::unique_ptr<Tokenizer> make_bpe_from_vocab_merges(const fs::path& vocab_path, const fs::path& merges_path,
                                                      const TokenizerConfig& config) {
  auto t = std::make_unique<ByteLevelBpe>();
  t->source_ = "vocab.json + merges.txt";
  t->where_ = vocab_path.parent_path().string();
  t->set_vocab(read_vocab_object(read_json(vocab_path), vocab_path, "(root)"));

  const std::string text = read_file(merges_path);
  size_t pos = 0, line_no = 0;
  int32_t rank = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
    if (line.empty()) continue;
    if (line_no == 1 && line.substr(0, 9) == "#version:") continue;
    const std::string where = fmt::format("{}: line {}", merges_path.string(), line_no);
    const size_t sp = line.find(' ');
    if (sp == std::string_view::npos || line.find(' ', sp + 1) != std::string_view::npos)
      fail_input(where, "bad merge", "\"left right\"", std::string(line.substr(0, 80)));
    t->add_merge(std::string(line.substr(0, sp)), std::string(line.substr(sp + 1)), rank++, where);
  }
  if (rank == 0) fail_input(merges_path.string(), "no merges", "at least one \"left right\" line", "none");

  // GPT2Tokenizer's defaults: <|endoftext|> as bos/eos/unk when the vocabulary has it, no BOS, no prefix space.
  TokenizerConfig c = config;
  const bool has_eot = t->vocab_.count("<|endoftext|>") > 0;
  for (auto* slot : {&c.bos_token, &c.eos_token, &c.unk_token}) {
    if (!*slot && has_eot) *slot = "<|endoftext|>";
  }
  add_config_specials(c, *t);
  t->add_prefix_space_ = config.add_prefix_space.value_or(false);
  t->splits_.push_back(std::make_unique<Regex>(kGpt2Pattern, false, vocab_path.string()));
  t->bos_ = config_token_id(c.bos_token, "bos_token", c, *t, config.add_bos_token.value_or(false));
  t->eos_ = config_token_id(c.eos_token, "eos_token", c, *t, config.add_eos_token.value_or(false));
  if (config.add_bos_token.value_or(false)) t->prefix_.push_back(*t->bos_);
  if (config.add_eos_token.value_or(false)) t->suffix_.push_back(*t->eos_);
  return t;
}

}  // namespace optima::text_detail
