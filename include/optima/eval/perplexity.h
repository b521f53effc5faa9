// Perplexity under the WikiText-2 protocol the pruning literature reports.
//
// Rows joined with "\n\n", tokenized once, cut into n = floor(T / seqlen) non-overlapping windows (the tail is
// dropped); each window runs on its own; a window's loss is the mean cross-entropy of its seqlen - 1 next-token
// predictions; perplexity = exp(mean over windows of that loss). The model runs block by block over all windows
// (prune/block_runner.h), so memory holds one block plus the windows' activations, never the whole model, and the
// activations go to a temporary file past --activation-memory.
//
// The rows come from a file in one of two formats (--text-format): "jsonl", a JSON Lines file with a "text" string
// per row, every row used exactly as given (empty rows and trailing newlines included) — with the rows of the Hugging
// Face dataset this is the field's "\n\n".join(rows), token for token; or "lines", a plain text file such as
// wiki.test.raw, one row per line, CR stripped and empty lines dropped. "auto" (the default) takes jsonl for a
// .jsonl file and lines otherwise.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "optima/core/defaults.h"
#include "optima/core/enum_names.h"
#include "optima/core/progress.h"
#include "optima/model/decoder.h"

namespace optima {

class Tokenizer;

enum class EvalTextFormat { kAuto, kLines, kJsonl };
inline constexpr EnumName<EvalTextFormat> kEvalTextFormatNames[] = {
    {EvalTextFormat::kAuto, "auto"}, {EvalTextFormat::kLines, "lines"}, {EvalTextFormat::kJsonl, "jsonl"}};
inline std::string_view to_string(EvalTextFormat v) {
  return enum_name<EvalTextFormat>(kEvalTextFormatNames, v);
}
inline EvalTextFormat parse_eval_text_format(std::string_view text) {
  return parse_enum<EvalTextFormat>(kEvalTextFormatNames, text, "--text-format");
}

struct PerplexityOptions {
  int64_t seqlen = kDefaultEvalSeqlen;
  int64_t batch_size = kDefaultBatchSize;  // windows per forward call (0: forward_batch_size(), prune/block_runner.h)
  int64_t max_windows = 0;                 // 0: all
  std::string source = "evaluation text";  // what errors name: the dataset file when there is one
  // Memory for the windows' hidden states between blocks (--activation-memory: auto, none or a size); past it they
  // are mapped from a temporary file.
  std::string activation_memory = "auto";
};

struct PerplexityResult {
  double perplexity = 0;
  double mean_nll = 0;
  int64_t seqlen = 0;
  int64_t windows = 0;
  int64_t tokens = 0;       // tokens in the stream (before dropping the tail)
  int64_t predictions = 0;  // windows * (seqlen - 1)
  double seconds = 0;
  std::vector<double> window_nll;
};

// The evaluation text: the file's rows joined with "\n\n". Lines: one row per line, CR stripped, empty lines
// dropped. JSON Lines: each non-blank line an object with a "text" string, taken as is (empty strings included).
// Auto: JSON Lines for a .jsonl file, else lines. Input errors name the file and line.
std::string read_eval_text(const std::filesystem::path& path,
                           EvalTextFormat format = parse_eval_text_format(kDefaultEvalTextFormat));

// Runs the protocol on an already tokenized stream.
PerplexityResult evaluate_perplexity(const DecoderModel& model, const std::vector<int64_t>& stream,
                                     const PerplexityOptions& options, ProgressSink& progress);

// What to evaluate a model directory on, and how.
struct EvalRequest {
  std::filesystem::path dataset;  // text file, one row per line, or JSON Lines (see text_format)
  EvalTextFormat text_format = parse_eval_text_format(kDefaultEvalTextFormat);
  std::filesystem::path tokenizer;  // empty: the model directory
  std::string device = "cpu";
  std::string dtype;                    // empty: the checkpoint's
  int64_t seqlen = kDefaultEvalSeqlen;  // capped at the model's positions (logged)
  int64_t batch_size = kDefaultBatchSize;
  int64_t max_windows = 0;                 // 0: all
  std::string activation_memory = "auto";  // as PerplexityOptions
};

// Opens the model directory, tokenizes the dataset and runs the protocol (optima eval, and prune --eval).
PerplexityResult evaluate_model_dir(const std::filesystem::path& model_dir, const EvalRequest& request,
                                    ProgressSink& progress);

}  // namespace optima
