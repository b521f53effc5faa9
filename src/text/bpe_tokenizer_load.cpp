// Loading byte-level BPE tokenizers (bpe_tokenizer.h) from the two layouts Hugging Face repositories use:
// tokenizer.json (model, added tokens, pre-tokenizer and post-processor, checked against what optima implements) and
// vocab.json + merges.txt (GPT-2 / OPT), with tokenizer_config.json's special tokens on top of either.
#include <fmt/format.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "bpe_tokenizer.h"
#include "byte_level_pretokenizer.h"
#include "optima/core/error.h"
#include "tokenizer_internal.h"

namespace optima::text_detail {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- tokenizer.json ----

// Token ids at or past this are refused (see read_vocab_object).
constexpr int64_t kMaxTokenId = int64_t{1} << 24;

// j[key] when j is an object holding a string there, else `fallback`: a "type" or "behavior" of another JSON type
// matches no supported value, and the caller's error shows what was found.
std::string string_member(const json& j, const char* key, const std::string& fallback = std::string()) {
  if (!j.is_object() || !j.contains(key)) return fallback;
  const json& v = j[key];
  return v.is_string() ? v.get<std::string>() : std::string();
}

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
    const std::string behavior = string_member(p, "behavior", "Isolated");
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
      // The key may be absent (true is the default), and a const json has no entry to show for it then.
      if (!first) unsupported(file, key + ".add_prefix_space", "false after a Split", json(true));
      t.add_prefix_space_ = true;
    }
    if (use_regex) t.splits_.push_back(std::make_unique<Regex>(kGpt2Pattern, false, key_where(file, key)));
    saw_byte_level = true;
  };
  const std::string type = string_member(pt, "type");
  if (type == "ByteLevel") {
    add_byte_level(pt, "pre_tokenizer", true);
  } else if (type == "Sequence") {
    const json& list = require(pt, "pretokenizers", file, "pre_tokenizer.");
    if (!list.is_array()) unsupported(file, "pre_tokenizer.pretokenizers", "an array", list);
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string key = fmt::format("pre_tokenizer.pretokenizers[{}]", i);
      const std::string ptype = string_member(list[i], "type");
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
      const std::string id = string_member(item["Sequence"], "id");
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
  const std::string type = string_member(pp, "type");
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
    if (!id.is_number_integer() || id.get<int64_t>() < 0)
      fail_input(key_where(file, fmt::format("{}.{}", key, piece)), "bad token id", "a non-negative integer",
                 id.dump());
    // The decoder keeps a table indexed by id, so an id far past any real vocabulary (which are dense, and hold at
    // most about a million tokens) would allocate gigabytes.
    if (id.get<int64_t>() >= kMaxTokenId)
      fail_input(key_where(file, fmt::format("{}.{}", key, piece)), "implausibly large token id",
                 fmt::format("below {}", kMaxTokenId), id.dump());
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
  const std::string type = string_member(pt, "type");
  if (type == "ByteLevel") return true;
  if (type == "Sequence" && pt.contains("pretokenizers") && pt["pretokenizers"].is_array()) {
    for (const auto& p : pt["pretokenizers"]) {
      if (p.is_object() && string_member(p, "type") == "ByteLevel") return true;
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
  if (j.contains("decoder") && !j["decoder"].is_null() && string_member(j["decoder"], "type") != "ByteLevel")
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
