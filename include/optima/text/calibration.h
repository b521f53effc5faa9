// Calibration data: the windows of token ids that pruning statistics are computed from.
//
// Inputs: plain text (one document per line), JSON Lines (a "text" field per line), or pre-tokenized ids in a .npy
// file (a 2-D integer array [nsamples, seqlen], used as is and in order — the convention for reproducible
// comparisons across tools).
//
// Sampling from text follows the reference scripts with a bit-exact copy of Python's `random`: seed it; for each
// sample draw a random document, redraw until it has more than `seqlen` tokens, then draw a random window start in
// [0, len - seqlen - 1]. Each document is tokenized on its own, with the tokenizer's BOS rule. When no document is
// long enough (common: real documents are often shorter than 2048 tokens), the "concatenated" rule applies instead:
// all documents, tokenized without special tokens, are joined with the EOS token into one stream, and each window
// start is drawn uniformly from it with the same generator. Which rule ran is reported (and logged by the caller).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace optima {

class Tokenizer;

struct CalibrationOptions {
  int64_t nsamples = 128;
  int64_t seqlen = 2048;
  uint64_t seed = 0;
};

struct CalibrationSet {
  int64_t nsamples = 0;
  int64_t seqlen = 0;
  std::vector<int64_t> ids;  // nsamples * seqlen, row-major
  std::string rule;          // "reference", "concatenated" or "pre-tokenized"
  std::string description;   // one line for the log and the report
  int64_t documents = 0;     // documents in the file (text inputs)
};

// Reads the documents of a text or JSON Lines file (format by extension: .jsonl/.json -> JSON Lines, else text).
std::vector<std::string> read_documents(const std::filesystem::path& path);

// Builds the calibration set from `path` (.npy pre-tokenized, else text/JSON Lines tokenized with `tokenizer`).
CalibrationSet load_calibration(const std::filesystem::path& path, const Tokenizer& tokenizer,
                                const CalibrationOptions& options);

// Samples windows from already read documents (the core of load_calibration, exposed for tests).
CalibrationSet sample_calibration(const std::vector<std::string>& documents, const Tokenizer& tokenizer,
                                  const CalibrationOptions& options, const std::string& source_name);

// Reads a 2-D little-endian integer .npy array (int32, int64, uint16, uint32) as int64 ids; writes one (int64).
std::vector<int64_t> read_npy_ids(const std::filesystem::path& path, int64_t& rows, int64_t& cols);
void write_npy_ids(const std::filesystem::path& path, const std::vector<int64_t>& ids, int64_t rows, int64_t cols);

}  // namespace optima
