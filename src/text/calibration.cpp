// Calibration sets from text, JSON Lines or pre-tokenized .npy files (see calibration.h).
#include "optima/text/calibration.h"

#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include <spdlog/spdlog.h>

#include "optima/core/error.h"
#include "optima/io/output_dir.h"
#include "optima/text/python_random.h"
#include "optima/text/tokenizer.h"

namespace optima {
namespace fs = std::filesystem;

std::vector<std::string> read_documents(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    fail_input(path.string(),
               fs::exists(path, ec) ? "cannot read calibration file" : "calibration file does not exist");
  }
  const std::string ext = path.extension().string();
  const bool jsonl = ext == ".jsonl" || ext == ".json";
  std::vector<std::string> documents;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (!jsonl) {
      documents.push_back(std::move(line));
      continue;
    }
    const std::string where = fmt::format("{}: line {}", path.string(), number);
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number like 1e400
      fail_input(where, fmt::format("malformed JSON: {}", e.what()));
    }
    if (!record.is_object() || !record.contains("text") || !record["text"].is_string())
      fail_input(where, "record has no \"text\" string", "{\"text\": \"...\"}", record.dump().substr(0, 80));
    std::string text = record["text"].get<std::string>();
    if (!text.empty()) documents.push_back(std::move(text));
  }
  if (documents.empty()) fail_input(path.string(), "calibration file holds no documents", "at least one", "none");
  return documents;
}

RuleChoice choose_calibration_rule(CalibRule requested, int64_t qualifying, int64_t documents, int64_t nsamples,
                                   int64_t seqlen, bool has_eos, const std::string& source_name) {
  const std::string counts = fmt::format("{} of {} documents have more than {} tokens", qualifying, documents, seqlen);
  RuleChoice choice;
  switch (requested) {
    case CalibRule::kReference:
      choice = {CalibRule::kReference, "asked for (--calib-rule reference); " + counts};
      break;
    case CalibRule::kConcatenated:
      choice = {CalibRule::kConcatenated, "asked for (--calib-rule concatenated); " + counts};
      break;
    case CalibRule::kAuto:
      if (qualifying >= nsamples)
        choice = {CalibRule::kReference, fmt::format("auto: {}, at least the {} windows asked for", counts, nsamples)};
      else if (has_eos || qualifying == 0)
        choice = {CalibRule::kConcatenated,
                  fmt::format("auto: only {}, fewer than the {} windows asked for", counts, nsamples)};
      else
        choice = {CalibRule::kReference,
                  fmt::format("auto: only {}, fewer than the {} windows asked for, but the tokenizer has no EOS "
                              "token to join documents with",
                              counts, nsamples)};
      break;
  }
  if (choice.rule == CalibRule::kReference && qualifying == 0)
    fail_input(source_name,
               fmt::format("no document is longer than seqlen ({} tokens), so the reference rule cannot draw a "
                           "window; use --calib-rule concatenated or auto",
                           seqlen),
               "at least one document of more than " + std::to_string(seqlen) + " tokens", counts);
  if (choice.rule == CalibRule::kConcatenated && !has_eos)
    fail_input(source_name, counts +
                                "; the concatenated rule joins documents with EOS, and the tokenizer has no EOS "
                                "token");
  choice.few_documents = choice.rule == CalibRule::kReference && qualifying < nsamples;
  return choice;
}

std::vector<int64_t> sample_stream_windows(const std::vector<int64_t>& stream, int64_t nsamples, int64_t seqlen,
                                           uint64_t seed, const std::string& source_name) {
  if (static_cast<int64_t>(stream.size()) <= seqlen)
    fail_input(source_name, "calibration text is too short for one window", fmt::format("more than {} tokens", seqlen),
               fmt::format("{} tokens in all", stream.size()));
  PythonRandom random(seed);
  std::vector<int64_t> ids;
  ids.reserve(static_cast<size_t>(nsamples * seqlen));
  for (int64_t s = 0; s < nsamples; ++s) {
    const int64_t start = random.randint(0, static_cast<int64_t>(stream.size()) - seqlen - 1);
    ids.insert(ids.end(), stream.begin() + start, stream.begin() + start + seqlen);
  }
  return ids;
}

nlohmann::json CalibrationSet::sampling_json() const {
  nlohmann::json j = {{"rule", rule}, {"nsamples", nsamples}, {"seqlen", seqlen}};
  if (!requested_rule.empty()) {
    j["requested_rule"] = requested_rule;
    j["documents"] = documents;
    j["qualifying_documents"] = qualifying_documents;
    j["reason"] = rule_reason;
  }
  return j;
}

namespace {

// The reference rule: a random document, redrawn until it has more than seqlen tokens, then a random window.
// Terminates: the caller checked that at least one document qualifies.
std::vector<int64_t> sample_reference_windows(const std::vector<std::vector<int64_t>>& tokens,
                                              const CalibrationOptions& options) {
  PythonRandom random(options.seed);
  const int64_t last = static_cast<int64_t>(tokens.size()) - 1;
  std::vector<int64_t> ids;
  ids.reserve(static_cast<size_t>(options.nsamples * options.seqlen));
  for (int64_t s = 0; s < options.nsamples; ++s) {
    const std::vector<int64_t>* doc = nullptr;
    do {
      doc = &tokens[static_cast<size_t>(random.randint(0, last))];
    } while (static_cast<int64_t>(doc->size()) <= options.seqlen);
    const int64_t start = random.randint(0, static_cast<int64_t>(doc->size()) - options.seqlen - 1);
    ids.insert(ids.end(), doc->begin() + start, doc->begin() + start + options.seqlen);
  }
  return ids;
}

// The concatenated rule's stream: every document without special tokens, joined with EOS.
std::vector<int64_t> joined_stream(const std::vector<std::string>& documents, const Tokenizer& tokenizer, int64_t eos) {
  std::vector<int64_t> stream;
  for (size_t i = 0; i < documents.size(); ++i) {
    if (i) stream.push_back(eos);
    const auto plain = tokenizer.encode(documents[i], /*add_special=*/false);
    stream.insert(stream.end(), plain.begin(), plain.end());
  }
  return stream;
}

}  // namespace

CalibrationSet sample_calibration(const std::vector<std::string>& documents, const Tokenizer& tokenizer,
                                  const CalibrationOptions& options, const std::string& source_name) {
  if (options.nsamples <= 0) fail_usage(fmt::format("nsamples must be positive (got {})", options.nsamples));
  if (options.seqlen <= 0) fail_usage(fmt::format("seqlen must be positive (got {})", options.seqlen));
  if (documents.empty()) fail_input(source_name, "no documents to sample from");
  CalibrationSet set;
  set.nsamples = options.nsamples;
  set.seqlen = options.seqlen;
  set.documents = static_cast<int64_t>(documents.size());
  set.requested_rule = std::string(to_string(options.rule));

  // Every document is tokenized once, up front: redraws are then cheap, and the choice of rule (how many documents
  // are long enough?) does not depend on the draws.
  std::vector<std::vector<int64_t>> tokens(documents.size());
  for (size_t i = 0; i < documents.size(); ++i) {
    tokens[i] = tokenizer.encode(documents[i], /*add_special=*/true);
    if (static_cast<int64_t>(tokens[i].size()) > options.seqlen) ++set.qualifying_documents;
  }
  const auto eos = tokenizer.eos_id();
  const RuleChoice choice = choose_calibration_rule(options.rule, set.qualifying_documents, set.documents,
                                                    options.nsamples, options.seqlen, eos.has_value(), source_name);
  set.rule = std::string(to_string(choice.rule));
  set.rule_reason = choice.reason;
  if (choice.few_documents)
    spdlog::warn(
        "calibration: only {} of {} documents in {} have more than {} tokens, fewer than the {} windows asked for: "
        "the reference rule draws several windows from each (--calib-rule auto or concatenated samples a stream of "
        "all documents instead)",
        set.qualifying_documents, set.documents, source_name, options.seqlen, options.nsamples);

  if (choice.rule == CalibRule::kReference) {
    set.ids = sample_reference_windows(tokens, options);
    set.description = fmt::format(
        "{} windows of {} tokens from {} (reference rule: random document with more than {} tokens, random window; "
        "{} of {} documents qualify; seed {})",
        options.nsamples, options.seqlen, source_name, options.seqlen, set.qualifying_documents, documents.size(),
        options.seed);
    return set;
  }
  const std::vector<int64_t> stream = joined_stream(documents, tokenizer, *eos);
  set.ids = sample_stream_windows(stream, options.nsamples, options.seqlen, options.seed, source_name);
  set.description = fmt::format(
      "{} windows of {} tokens from {} (concatenated rule: the {} documents joined with EOS into a stream of {} "
      "tokens, windows drawn from it; {} of them have more than {} tokens; seed {})",
      options.nsamples, options.seqlen, source_name, documents.size(), stream.size(), set.qualifying_documents,
      options.seqlen, options.seed);
  return set;
}

std::vector<int64_t> read_npy_ids(const fs::path& path, int64_t& rows, int64_t& cols) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_input(path.string(), "cannot read .npy file");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0)
    fail_input(path.string(), "not a .npy file", "the \\x93NUMPY magic", "other bytes");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, offset = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) fail_input(path.string(), "truncated .npy header");
    for (int i = 3; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[8 + i]);
    offset = 12;
  } else {
    fail_input(path.string(), "unsupported .npy version", "1, 2 or 3", std::to_string(major));
  }
  if (offset + header_len > bytes.size()) fail_input(path.string(), "truncated .npy header");
  const std::string header = bytes.substr(offset, header_len);
  std::smatch m;
  if (!std::regex_search(header, m, std::regex(R"('descr'\s*:\s*'([^']*)')")))
    fail_input(path.string(), ".npy header has no descr");
  const std::string descr = m[1];
  if (std::regex_search(header, std::regex(R"('fortran_order'\s*:\s*True)")))
    fail_input(path.string(), "Fortran-ordered arrays are not supported", "C order", "fortran_order True");
  if (!std::regex_search(header, m, std::regex(R"('shape'\s*:\s*\(\s*(\d+)\s*,\s*(\d+)\s*,?\s*\))")))
    fail_input(path.string(), "calibration ids must be a 2-D array", "shape (nsamples, seqlen)", header);
  rows = std::stoll(m[1]);
  cols = std::stoll(m[2]);
  static const std::map<std::string, int> kSizes = {{"<i4", 4}, {"<i8", 8}, {"<u2", 2}, {"<u4", 4}, {"|u1", 1}};
  auto size_it = kSizes.find(descr);
  if (size_it == kSizes.end())
    fail_input(path.string(), "unsupported element type", "little-endian int32, int64, uint16 or uint32", descr);
  const size_t elem = static_cast<size_t>(size_it->second);
  const size_t data = offset + header_len;
  const size_t count = static_cast<size_t>(rows * cols);
  if (bytes.size() - data != count * elem)
    fail_input(path.string(), "data size does not match the shape", fmt::format("{} bytes", count * elem),
               fmt::format("{} bytes", bytes.size() - data));
  std::vector<int64_t> ids(count);
  for (size_t i = 0; i < count; ++i) {
    const char* p = bytes.data() + data + i * elem;
    if (descr == "<i4") {
      int32_t v;
      std::memcpy(&v, p, 4);
      ids[i] = v;
    } else if (descr == "<i8") {
      std::memcpy(&ids[i], p, 8);
    } else if (descr == "<u2") {
      uint16_t v;
      std::memcpy(&v, p, 2);
      ids[i] = v;
    } else if (descr == "<u4") {
      uint32_t v;
      std::memcpy(&v, p, 4);
      ids[i] = v;
    } else {
      ids[i] = static_cast<unsigned char>(*p);
    }
    if (ids[i] < 0)
      fail_input(path.string(), fmt::format("negative token id at index {}", i), ">= 0", std::to_string(ids[i]));
  }
  return ids;
}

void write_npy_ids(const fs::path& path, const std::vector<int64_t>& ids, int64_t rows, int64_t cols) {
  OPTIMA_ASSERT(static_cast<int64_t>(ids.size()) == rows * cols);
  std::string header = fmt::format("{{'descr': '<i8', 'fortran_order': False, 'shape': ({}, {}), }}", rows, cols);
  // Pad so the data starts on a 64-byte boundary, as numpy does; the header ends with a newline.
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string prefix = "\x93NUMPY";
  prefix += static_cast<char>(1);
  prefix += static_cast<char>(0);
  prefix += static_cast<char>(header.size() & 0xff);
  prefix += static_cast<char>((header.size() >> 8) & 0xff);
  OutputFile out(path);
  out.write(prefix);
  out.write(header);
  out.write(ids.data(), ids.size() * sizeof(int64_t));
  out.commit();
}

CalibrationSet load_calibration(const fs::path& path, const Tokenizer& tokenizer, const CalibrationOptions& options) {
  if (path.extension() == ".npy") {
    CalibrationSet set;
    int64_t rows = 0, cols = 0;
    set.ids = read_npy_ids(path, rows, cols);
    if (rows != options.nsamples || cols != options.seqlen)
      fail_input(path.string(), "pre-tokenized calibration windows do not match the settings",
                 fmt::format("{} x {} (--nsamples x --seqlen)", options.nsamples, options.seqlen),
                 fmt::format("{} x {}; pass --nsamples {} --seqlen {}", rows, cols, rows, cols));
    set.nsamples = rows;
    set.seqlen = cols;
    set.rule = "pre-tokenized";
    set.description =
        fmt::format("{} windows of {} tokens from {} (pre-tokenized, used as is)", rows, cols, path.string());
    return set;
  }
  return sample_calibration(read_documents(path), tokenizer, options, path.string());
}

}  // namespace optima
