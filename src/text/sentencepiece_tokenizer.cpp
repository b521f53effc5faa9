// SentencePiece tokenizers (LLaMA-1/2 family, stories260k). libsentencepiece (Debian) reads tokenizer.model and
// answers piece, type and byte queries; the ids follow transformers' LlamaTokenizer (5.x), which converts
// tokenizer.model into a `tokenizers` BPE, rather than SentencePiece's own encoder. The two differ in corners:
//  - special tokens (<s>, </s>, <unk>) written in the text become their ids; SentencePiece spells them out;
//  - the "▁" word prefix follows the Metaspace pre-tokenizer: none when the text already starts with a space, and
//    with legacy=false (the default) only at the very start of the input, not after a special token;
//  - merges are ranked by the id of the merged piece, not by its score, which changes runs of spaces in LLaMA-2;
//  - SentencePiece's normalizer is not applied (transformers ignores it; identity for LLaMA anyway).
// Only BPE models are accepted (LLaMA family); unigram models are rejected with an error naming the file.
// decode() mirrors transformers' decoder (▁ -> space, byte pieces fused into UTF-8, one leading space stripped).
#include <fmt/format.h>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <tuple>
#include <unordered_map>

#include "optima/core/error.h"
#include "tokenizer_internal.h"

namespace optima::text_detail {
namespace {

namespace fs = std::filesystem;

// Reads a protobuf varint at s[pos]; false when truncated.
bool read_varint(std::string_view s, size_t& pos, uint64_t& value) {
  value = 0;
  for (int shift = 0; shift < 64 && pos < s.size(); shift += 7) {
    const auto b = static_cast<unsigned char>(s[pos++]);
    value |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

// Calls f(field number, varint value, payload, whole encoded field) for each top-level field of a serialized
// protobuf message. Only the few fields optima needs are read this way, so no protobuf headers are required.
template <typename F>
void for_each_field(std::string_view msg, const fs::path& path, F&& f) {
  size_t pos = 0;
  while (pos < msg.size()) {
    const size_t start = pos;
    uint64_t tag = 0, value = 0;
    std::string_view payload;
    bool ok = read_varint(msg, pos, tag);
    switch (tag & 7) {
      case 0: ok = ok && read_varint(msg, pos, value); break;
      case 1: pos += 8; break;
      case 5: pos += 4; break;
      case 2:
        ok = ok && read_varint(msg, pos, value) && value <= msg.size() - pos;
        if (ok) payload = msg.substr(pos, value);
        pos += ok ? value : 0;
        break;
      default: ok = false;
    }
    if (!ok || pos > msg.size())
      fail_input(path.string(), "not a SentencePiece model", "a serialized ModelProto", "malformed protobuf");
    f(static_cast<uint32_t>(tag >> 3), value, payload, msg.substr(start, pos - start));
  }
}

// TrainerSpec.model_type of a serialized ModelProto: 1 unigram (the default), 2 BPE, 3 word, 4 char.
uint64_t model_type(const std::string& model, const fs::path& path) {
  uint64_t type = 1;
  for_each_field(model, path, [&](uint32_t field, uint64_t, std::string_view payload, std::string_view) {
    if (field != 2) return;  // ModelProto.trainer_spec
    for_each_field(payload, path, [&](uint32_t f, uint64_t v, std::string_view, std::string_view) {
      if (f == 3) type = v;  // TrainerSpec.model_type
    });
  });
  return type;
}

// ModelProto.pieces[i].type for every piece: 1 normal (the default), 2 unknown, 3 control, 4 user-defined, 5 unused,
// 6 byte. The C++ API of libsentencepiece 0.1.x has no IsUserDefined().
std::vector<uint64_t> piece_types(const std::string& model, const fs::path& path) {
  std::vector<uint64_t> types;
  for_each_field(model, path, [&](uint32_t field, uint64_t, std::string_view payload, std::string_view) {
    if (field != 1) return;
    uint64_t type = 1;
    for_each_field(payload, path, [&](uint32_t f, uint64_t v, std::string_view, std::string_view) {
      if (f == 3) type = v;
    });
    types.push_back(type);
  });
  return types;
}

size_t count_code_points(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  enum class Prepend { kAlways, kFirst, kNever };

  sentencepiece::SentencePieceProcessor sp_;
  std::string where_;
  AddedTokenSplitter specials_;
  Prepend prepend_ = Prepend::kFirst;
  std::vector<int64_t> prefix_, suffix_;
  std::optional<int64_t> bos_, eos_;
  bool legacy_ = false;

  // The model is encoded the way transformers 5.x converts it to a `tokenizers` BPE (see build_hf_bpe).
  std::vector<bool> mergeable_;  // ids that occur in some merge; the others split a word into independent runs
  std::unordered_map<std::string, int32_t> vocab_;
  MergeTable merges_;
  std::array<int32_t, 256> byte_piece_{};  // id of "<0xAB>", -1 when missing

  // transformers' SentencePieceExtractor + generate_merges(vocab): every split of every piece into two pieces is a
  // merge, ranked by the id of the merged piece, then by the lengths (in characters) of its left and right parts,
  // then by the ids of the parts. This ranks the all-"▁" pieces of LLaMA (ids 259.., score -1e9) first, so runs of
  // spaces tokenize differently from SentencePiece's score order (e.g. "a  world": "▁▁" "world" here, "▁" "▁world"
  // in SentencePiece).
  void build_hf_bpe() {
    const int n = sp_.GetPieceSize();
    std::vector<std::string> pieces(n);
    for (int id = 0; id < n; ++id) {
      pieces[id] = sp_.IdToPiece(id);
      vocab_[pieces[id]] = id;  // a repeated piece keeps its last id, like the Python dict
    }
    struct Merge {
      int32_t merged, left, right;
      size_t len_left, len_right;
    };
    std::vector<Merge> all;
    for (int id = 0; id < n; ++id) {
      const std::string& p = pieces[id];
      if (vocab_[p] != id) continue;
      std::vector<Merge> local;
      for (size_t k = 1; k < p.size(); ++k) {
        if ((static_cast<unsigned char>(p[k]) & 0xC0) == 0x80) continue;  // split between characters only
        auto l = vocab_.find(p.substr(0, k)), r = vocab_.find(p.substr(k));
        if (l != vocab_.end() && r != vocab_.end())
          local.push_back({id, l->second, r->second, count_code_points(l->first), count_code_points(r->first)});
      }
      std::sort(local.begin(), local.end(),
                [](const Merge& a, const Merge& b) { return std::tie(a.left, a.right) < std::tie(b.left, b.right); });
      all.insert(all.end(), local.begin(), local.end());
    }
    std::stable_sort(all.begin(), all.end(), [](const Merge& a, const Merge& b) {
      return std::tie(a.merged, a.len_left, a.len_right) < std::tie(b.merged, b.len_left, b.len_right);
    });
    merges_.reserve(all.size());
    mergeable_.assign(static_cast<size_t>(n), false);
    for (size_t i = 0; i < all.size(); ++i) {
      mergeable_[all[i].left] = mergeable_[all[i].right] = true;
      const uint64_t key = pair_key(all[i].left, all[i].right);
      if (!merges_.count(key)) merges_[key] = {static_cast<int32_t>(i), all[i].merged};  // the first rank applies
    }
    for (int b = 0; b < 256; ++b) {
      auto it = vocab_.find(fmt::format("<0x{:02X}>", b));
      byte_piece_[b] = it == vocab_.end() ? -1 : it->second;
    }
  }

  // `tokenizers`' BPE with byte_fallback over one Metaspace word (spaces already "▁", the prefix already added).
  void encode_hf_bpe(std::string_view word, std::vector<int64_t>& out) const {
    std::vector<int32_t> syms;
    syms.reserve(word.size());
    for (size_t i = 0; i < word.size();) {
      const auto b = static_cast<unsigned char>(word[i]);
      const size_t len = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
      const std::string ch(word.substr(i, len));
      i += len;
      auto it = vocab_.find(ch);
      if (it != vocab_.end()) {
        syms.push_back(it->second);
        continue;
      }
      bool all_bytes = true;
      for (char c : ch) all_bytes = all_bytes && byte_piece_[static_cast<unsigned char>(c)] >= 0;
      if (all_bytes) {
        for (char c : ch) syms.push_back(byte_piece_[static_cast<unsigned char>(c)]);
      }  // else: transformers' converted BPE has no unk token and drops the character
    }
    // Merges never involve a symbol that is in no merge (newlines and other byte-fallback pieces), so the runs between
    // such symbols are merged independently: the same result, much faster for a whole document as one word.
    std::vector<int32_t> run;
    auto flush = [&] {
      if (run.empty()) return;
      const std::vector<int32_t> ids = bpe_merge(run, merges_);
      out.insert(out.end(), ids.begin(), ids.end());
      run.clear();
    };
    for (int32_t id : syms) {
      if (mergeable_[id]) {
        run.push_back(id);
      } else {
        flush();
        out.push_back(id);
      }
    }
    flush();
  }

  int piece_id(const std::string& piece) const {
    const int id = sp_.PieceToId(piece);
    return sp_.IdToPiece(id) == piece ? id : -1;  // PieceToId answers unk for unknown pieces
  }

  void encode_text(std::string_view text, size_t offset, std::vector<int64_t>& out) const {
    static constexpr std::string_view kMeta = "\xE2\x96\x81";  // ▁
    const bool starts_with_space = text.front() == ' ' || text.substr(0, kMeta.size()) == kMeta;
    const bool prepend =
        !starts_with_space && (prepend_ == Prepend::kAlways || (prepend_ == Prepend::kFirst && offset == 0));
    std::string input;
    input.reserve(text.size() + 3);
    if (prepend) input.append(kMeta);
    for (char c : text) {
      if (c == ' ') {
        input.append(kMeta);
      } else {
        input.push_back(c);
      }
    }
    encode_hf_bpe(input, out);
  }

  std::vector<int64_t> encode(std::string_view text, bool add_special) const override {
    const std::string clean = sanitize_utf8(text);
    std::vector<Segment> segments;
    specials_.split(clean, segments);
    std::vector<int64_t> out;
    out.reserve(clean.size() / 3 + 4);
    if (add_special) out.insert(out.end(), prefix_.begin(), prefix_.end());
    for (const Segment& seg : segments) {
      if (seg.token_id >= 0) {
        out.push_back(seg.token_id);
      } else {
        encode_text(seg.text, seg.offset, out);
      }
    }
    if (add_special) out.insert(out.end(), suffix_.begin(), suffix_.end());
    return out;
  }

  void check_id(int64_t id) const {
    if (id < 0 || id >= sp_.GetPieceSize())
      fail_input(where_, "unknown token id", fmt::format("an id in [0, {})", sp_.GetPieceSize()), std::to_string(id));
  }

  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string out, bytes;
    // Byte pieces in a row form one UTF-8 string when valid; otherwise each byte becomes U+FFFD (transformers'
    // ByteFallback decoder).
    auto flush_bytes = [&] {
      if (bytes.empty()) return;
      if (sanitize_utf8(bytes) == bytes) {
        out += bytes;
      } else {
        for (size_t i = 0; i < bytes.size(); ++i) out += "\xEF\xBF\xBD";
      }
      bytes.clear();
    };
    for (int64_t id64 : ids) {
      check_id(id64);
      const int id = static_cast<int>(id64);
      const AddedToken* added = specials_.find_id(id);
      if ((added && added->special) || sp_.IsControl(id) || sp_.IsUnknown(id)) continue;  // skip_special_tokens
      const std::string p = sp_.IdToPiece(id);
      if (sp_.IsByte(id)) {  // "<0xAB>"
        bytes.push_back(static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16)));
        continue;
      }
      flush_bytes();
      for (size_t i = 0; i < p.size();) {
        if (p.compare(i, 3, "\xE2\x96\x81") == 0) {
          out.push_back(' ');
          i += 3;
        } else {
          out.push_back(p[i++]);
        }
      }
    }
    flush_bytes();
    if (prepend_ != Prepend::kNever && !out.empty() && out.front() == ' ') out.erase(0, 1);
    return sanitize_utf8(out);
  }

  std::string piece(int64_t id) const override {
    check_id(id);
    return sp_.IdToPiece(static_cast<int>(id));
  }
  int64_t vocab_size() const override { return sp_.GetPieceSize(); }
  std::optional<int64_t> bos_id() const override { return bos_; }
  std::optional<int64_t> eos_id() const override { return eos_; }
  std::string describe() const override {
    return fmt::format("SentencePiece (tokenizer.model, {} tokens, {} prefix space{})", sp_.GetPieceSize(),
                       prepend_ == Prepend::kNever ? "no" : "a",
                       prepend_ == Prepend::kAlways ? " before every segment (legacy)" : "");
  }
};

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece(const fs::path& path, const TokenizerConfig& config) {
  auto t = std::make_unique<SentencePieceTokenizer>();
  t->where_ = path.string();
  const std::string raw = read_file(path);
  const auto status = t->sp_.LoadFromSerializedProto(raw);
  if (!status.ok())
    fail_input(path.string(), "cannot load SentencePiece model", "a valid tokenizer.model", status.ToString());

  // transformers' LlamaTokenizer: add_prefix_space defaults to true, legacy to false.
  const bool add_prefix_space = config.add_prefix_space.value_or(true);
  t->legacy_ = config.legacy.value_or(false);
  t->prepend_ = !add_prefix_space ? SentencePieceTokenizer::Prepend::kNever
                : t->legacy_      ? SentencePieceTokenizer::Prepend::kAlways
                                  : SentencePieceTokenizer::Prepend::kFirst;

  const uint64_t type = model_type(raw, path);
  if (type != 2)
    fail_input(path.string(), "unsupported SentencePiece model type", "BPE (2), as in the LLaMA family",
               type == 1 ? "unigram (1)" : std::to_string(type));
  t->build_hf_bpe();

  // Control and unknown pieces are the special tokens; so are the config's tokens when the model has them.
  // User-defined pieces are matched in the text too, but are not special (decode keeps them).
  const std::vector<uint64_t> types = piece_types(raw, path);
  for (int id = 0; id < t->sp_.GetPieceSize(); ++id) {
    if (t->sp_.IsControl(id) || t->sp_.IsUnknown(id)) t->specials_.add({t->sp_.IdToPiece(id), id, true, false, false});
    if (static_cast<size_t>(id) < types.size() && types[id] == 4)
      t->specials_.add({t->sp_.IdToPiece(id), id, false, false, false});
  }
  for (const auto* name : {&config.bos_token, &config.eos_token, &config.unk_token, &config.pad_token}) {
    if (!*name) continue;
    const int id = t->piece_id(**name);
    if (id >= 0) t->specials_.add({**name, id, true, false, false});
  }
  for (const auto& a : config.added_tokens) {
    if (a.id < t->sp_.GetPieceSize() && t->sp_.IdToPiece(static_cast<int>(a.id)) == a.content) t->specials_.add(a);
  }

  const fs::path config_path = config.dir / "tokenizer_config.json";
  auto token_id = [&](const std::optional<std::string>& name, int model_id, const char* key,
                      bool required) -> std::optional<int64_t> {
    if (name) {
      const int id = t->piece_id(*name);
      if (id >= 0) return id;
      if (required)
        fail_input(fmt::format("{}: {}", config_path.string(), key), "token is not in the SentencePiece model",
                   "a piece of " + path.filename().string(), *name);
      return std::nullopt;
    }
    if (model_id >= 0) return model_id;
    if (required) fail_input(path.string(), fmt::format("model has no {}", key), "a BOS/EOS piece", "none");
    return std::nullopt;
  };
  const bool add_bos = config.add_bos_token.value_or(true), add_eos = config.add_eos_token.value_or(false);
  t->bos_ = token_id(config.bos_token, t->sp_.bos_id(), "bos_token", add_bos);
  t->eos_ = token_id(config.eos_token, t->sp_.eos_id(), "eos_token", add_eos);
  if (add_bos) t->prefix_.push_back(*t->bos_);
  if (add_eos) t->suffix_.push_back(*t->eos_);
  return t;
}

}  // namespace optima::text_detail
