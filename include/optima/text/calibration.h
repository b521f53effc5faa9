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
//
// Which rule runs is a setting (--calib-rule): "reference", "concatenated", or "auto" (the default), which takes the
// reference rule when at least nsamples documents qualify (have more than seqlen tokens) and the concatenated rule
// otherwise. "At least nsamples" because with fewer, the reference rule must draw several windows from one document:
// on TinyStories at seqlen 256, 2 of 1610 stories qualify and all 128 windows would come from those two. The
// reference rule asked for by name still runs then, with a warning that gives the numbers.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "optima/core/defaults.h"
#include "optima/core/enum_names.h"

namespace optima {

class Tokenizer;

enum class CalibRule { kAuto, kReference, kConcatenated };
inline constexpr EnumName<CalibRule> kCalibRuleNames[] = {
    {CalibRule::kAuto, "auto"}, {CalibRule::kReference, "reference"}, {CalibRule::kConcatenated, "concatenated"}};
inline std::string_view to_string(CalibRule v) {
  return enum_name<CalibRule>(kCalibRuleNames, v);
}
inline CalibRule parse_calib_rule(std::string_view text) {
  return parse_enum<CalibRule>(kCalibRuleNames, text, "--calib-rule");
}

struct CalibrationOptions {
  int64_t nsamples = kDefaultNsamples;
  int64_t seqlen = kDefaultSeqlen;
  uint64_t seed = kDefaultSeed;
  CalibRule rule = parse_calib_rule(kDefaultCalibRule);
};

// The rule a text calibration set is sampled with, and why, in words for the log and the report.
struct RuleChoice {
  CalibRule rule = CalibRule::kReference;  // kReference or kConcatenated, never kAuto
  std::string reason;
  bool few_documents = false;  // the reference rule runs with fewer qualifying documents than windows (warned)
};

// The decision of --calib-rule: `qualifying` of `documents` have more than seqlen tokens; `has_eos` says whether the
// concatenated rule is possible. Auto: reference when qualifying >= nsamples, else concatenated (reference when the
// tokenizer has no EOS and at least one document qualifies). Input error when the requested rule cannot run (the
// reference rule with no qualifying document would redraw forever).
RuleChoice choose_calibration_rule(CalibRule requested, int64_t qualifying, int64_t documents, int64_t nsamples,
                                   int64_t seqlen, bool has_eos, const std::string& source_name);

// Windows of `seqlen` tokens drawn from `stream` with the concatenated rule: with PythonRandom(seed), each start
// uniform in [0, len - seqlen - 1]. Deterministic for a seed; input error when the stream has no more than seqlen
// tokens.
std::vector<int64_t> sample_stream_windows(const std::vector<int64_t>& stream, int64_t nsamples, int64_t seqlen,
                                           uint64_t seed, const std::string& source_name);

struct CalibrationSet {
  int64_t nsamples = 0;
  int64_t seqlen = 0;
  std::vector<int64_t> ids;          // nsamples * seqlen, row-major
  std::string rule;                  // "reference", "concatenated", "pre-tokenized" or "none"
  std::string description;           // one line for the log and the report
  int64_t documents = 0;             // documents in the file (text inputs)
  std::string requested_rule;        // --calib-rule as given (text inputs)
  int64_t qualifying_documents = 0;  // documents with more than seqlen tokens (text inputs)
  std::string rule_reason;           // why `rule` ran (text inputs)

  // What the report records of the sampling: rule, requested rule, reason and the counts.
  nlohmann::json sampling_json() const;
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
