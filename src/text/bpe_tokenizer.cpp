// Byte-level BPE (GPT-2, OPT, LLaMA-3-style tokenizer.json), written to give the same ids as Hugging Face
// `tokenizers`: added tokens are split out of the raw text first, the rest is pre-tokenized with a PCRE2 regex, each
// pre-token is mapped through GPT-2's byte-to-unicode table and merged by merge rank. This file is the encoder and
// decoder; the pre-tokenizer is in byte_level_pretokenizer.cpp and the loaders in bpe_tokenizer_load.cpp.
#include "bpe_tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "optima/core/error.h"

namespace optima::text_detail {

void ByteLevelBpe::set_vocab(std::unordered_map<std::string, int32_t> vocab) {
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

int32_t ByteLevelBpe::id_of(const std::string& piece, const std::string& where) const {
  auto it = vocab_.find(piece);
  if (it == vocab_.end()) fail_input(where, "merge uses a token that is not in the vocabulary", "a known token", piece);
  return it->second;
}

void ByteLevelBpe::add_merge(const std::string& a, const std::string& b, int32_t rank, const std::string& where) {
  const int32_t ia = id_of(a, where), ib = id_of(b, where), merged = id_of(a + b, where);
  merges_[pair_key(ia, ib)] = {rank, merged};  // a repeated pair takes its later rank, as `tokenizers` does
}

bool ByteLevelBpe::known_id(int64_t id) const {
  return added_.find_id(id) != nullptr ||
         (id >= 0 && id < static_cast<int64_t>(pieces_.size()) && !pieces_[static_cast<size_t>(id)].empty());
}

std::optional<int64_t> ByteLevelBpe::lookup(const std::string& token) const {
  for (const auto& t : added_.tokens()) {
    if (t.content == token) return t.id;
  }
  auto it = vocab_.find(token);
  if (it != vocab_.end()) return it->second;
  return std::nullopt;
}

void ByteLevelBpe::bpe_word(std::string_view word, std::vector<int64_t>& out) const {
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

void ByteLevelBpe::push_byte(unsigned char b, std::vector<int64_t>& out) const {
  if (byte_ids_[b] >= 0) {
    out.push_back(byte_ids_[b]);
  } else if (unk_id_) {
    if (!(fuse_unk_ && !out.empty() && out.back() == *unk_id_)) out.push_back(*unk_id_);
  }  // else: dropped, as `tokenizers` drops characters it cannot represent when there is no unk token
}

std::vector<int32_t> ByteLevelBpe::merge(std::string_view word) const {
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

void ByteLevelBpe::pretokenize(std::string_view piece, size_t level, std::vector<int64_t>& out) const {
  if (level == splits_.size()) {
    bpe_word(piece, out);
    return;
  }
  splits_[level]->split(piece, [&](size_t a, size_t b) { pretokenize(piece.substr(a, b - a), level + 1, out); });
}

std::vector<int64_t> ByteLevelBpe::encode(std::string_view text, bool add_special) const {
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
      // assign(1, ' ') rather than = " ": GCC 12 at -O3 reports a false -Wrestrict on the latter here, which CI's
      // -Werror would turn into a failure.
      prefixed.assign(1, ' ');
      prefixed += piece;
      piece = prefixed;
    }
    pretokenize(piece, 0, out);
  }
  if (add_special) out.insert(out.end(), suffix_.begin(), suffix_.end());
  return out;
}

std::string ByteLevelBpe::decode(const std::vector<int64_t>& ids) const {
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

std::string ByteLevelBpe::piece(int64_t id) const {
  if (const AddedToken* t = added_.find_id(id)) return t->content;
  if (id < 0 || id >= static_cast<int64_t>(pieces_.size()) || pieces_[id].empty())
    fail_input(where_, "unknown token id", fmt::format("an id in [0, {})", vocab_size()), std::to_string(id));
  return pieces_[id];
}

int64_t ByteLevelBpe::vocab_size() const {
  int64_t n = static_cast<int64_t>(pieces_.size());
  for (const auto& t : added_.tokens()) n = std::max(n, t.id + 1);
  return n;
}

std::string ByteLevelBpe::describe() const {
  return fmt::format("byte-level BPE ({}, {} tokens{})", source_, vocab_size(),
                     splits_.empty() || splits_[0]->jit() ? "" : ", regex without JIT");
}

}  // namespace optima::text_detail
