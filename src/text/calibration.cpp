// Calibration sets from text, JSON Lines or pre-tokenized .npy files (see calibration.h).
#include "optima/text/calibration.h"

#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

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

CalibrationSet sample_calibration(const std::vector<std::string>& documents, const Tokenizer& tokenizer,
                                  const CalibrationOptions& options, const std::string& source_name) {
  if (options.nsamples <= 0) fail_usage(fmt::format("nsamples must be positive (got {})", options.nsamples));
  if (options.seqlen <= 0) fail_usage(fmt::format("seqlen must be positive (got {})", options.seqlen));
  if (documents.empty()) fail_input(source_name, "no documents to sample from");
  CalibrationSet set;
  set.nsamples = options.nsamples;
  set.seqlen = options.seqlen;
  set.documents = static_cast<int64_t>(documents.size());
  set.ids.reserve(static_cast<size_t>(options.nsamples * options.seqlen));

  // Every document is tokenized once, up front: redraws are then cheap, and the choice of rule (is any document
  // long enough?) does not depend on the draws.
  std::vector<std::vector<int64_t>> tokens(documents.size());
  int64_t long_documents = 0;
  for (size_t i = 0; i < documents.size(); ++i) {
    tokens[i] = tokenizer.encode(documents[i], /*add_special=*/true);
    if (static_cast<int64_t>(tokens[i].size()) > options.seqlen) ++long_documents;
  }

  PythonRandom random(options.seed);
  const int64_t last = static_cast<int64_t>(documents.size()) - 1;
  if (long_documents > 0) {
    set.rule = "reference";
    for (int64_t s = 0; s < options.nsamples; ++s) {
      const std::vector<int64_t>* doc = nullptr;
      do {  // terminates: at least one document qualifies
        doc = &tokens[static_cast<size_t>(random.randint(0, last))];
      } while (static_cast<int64_t>(doc->size()) <= options.seqlen);
      const int64_t start = random.randint(0, static_cast<int64_t>(doc->size()) - options.seqlen - 1);
      set.ids.insert(set.ids.end(), doc->begin() + start, doc->begin() + start + options.seqlen);
    }
    set.description = fmt::format(
        "{} windows of {} tokens from {} (reference rule: random document with more than {} tokens, random window; "
        "{} of {} documents qualify; seed {})",
        options.nsamples, options.seqlen, source_name, options.seqlen, long_documents, documents.size(), options.seed);
    return set;
  }

  const auto eos = tokenizer.eos_id();
  if (!eos)
    fail_input(source_name, "no document is longer than seqlen and the tokenizer has no EOS token to join them");
  std::vector<int64_t> stream;
  for (size_t i = 0; i < documents.size(); ++i) {
    if (i) stream.push_back(*eos);
    const auto plain = tokenizer.encode(documents[i], /*add_special=*/false);
    stream.insert(stream.end(), plain.begin(), plain.end());
  }
  if (static_cast<int64_t>(stream.size()) <= options.seqlen)
    fail_input(source_name, "calibration text is too short for one window",
               fmt::format("more than {} tokens", options.seqlen), fmt::format("{} tokens in all", stream.size()));
  set.rule = "concatenated";
  for (int64_t s = 0; s < options.nsamples; ++s) {
    const int64_t start = random.randint(0, static_cast<int64_t>(stream.size()) - options.seqlen - 1);
    set.ids.insert(set.ids.end(), stream.begin() + start, stream.begin() + start + options.seqlen);
  }
  set.description = fmt::format(
      "{} windows of {} tokens from {} (concatenated rule: no document has more than {} tokens, so the {} documents "
      "were joined with EOS into a stream of {} tokens and windows drawn from it; seed {})",
      options.nsamples, options.seqlen, source_name, options.seqlen, documents.size(), stream.size(), options.seed);
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
