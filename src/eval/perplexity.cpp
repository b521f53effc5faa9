// Perplexity evaluation, block by block (see perplexity.h).
#include "optima/eval/perplexity.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <fstream>

#include <unistd.h>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "optima/core/error.h"
#include "optima/core/interrupt.h"
#include "optima/io/checkpoint.h"
#include "optima/io/tensor.h"
#include "optima/prune/block_runner.h"
#include "optima/text/tokenizer.h"

namespace optima {

namespace {

// Where evaluation activations past the memory budget go: a file of this process in the temporary folder.
std::filesystem::path spill_file_path() {
  return std::filesystem::temp_directory_path() / fmt::format("optima-eval-{}.spill", ::getpid());
}

}  // namespace

namespace {

// JSON Lines rows, each used as given: the empty rows of a dataset are part of its "\n\n".join(rows).
std::string read_jsonl_rows(const std::filesystem::path& path, std::ifstream& in) {
  std::string line, text;
  size_t rows = 0;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // a blank line is no record
    const std::string where = fmt::format("{}: line {}", path.string(), number);
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail_input(where, fmt::format("malformed JSON: {}", e.what()));
    }
    if (!record.is_object() || !record.contains("text") || !record["text"].is_string())
      fail_input(where, "row has no \"text\" string", "{\"text\": \"...\"}", record.dump().substr(0, 80));
    if (rows++) text += "\n\n";
    text += record["text"].get<std::string>();
  }
  if (rows == 0)
    fail_input(path.string(), "evaluation file holds no rows", "at least one {\"text\": ...} line", "none");
  return text;
}

}  // namespace

std::string read_eval_text(const std::filesystem::path& path, EvalTextFormat format) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    fail_input(path.string(),
               std::filesystem::exists(path, ec) ? "cannot read evaluation text" : "evaluation file does not exist");
  }
  if (format == EvalTextFormat::kJsonl || (format == EvalTextFormat::kAuto && path.extension() == ".jsonl"))
    return read_jsonl_rows(path, in);
  std::string line, text;
  size_t rows = 0;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (rows++) text += "\n\n";
    text += line;
  }
  if (rows == 0) fail_input(path.string(), "evaluation text is empty", "at least one non-empty line", "none");
  return text;
}

PerplexityResult evaluate_perplexity(const DecoderModel& model, const std::vector<int64_t>& stream,
                                     const PerplexityOptions& options, ProgressSink& progress) {
  const auto start = std::chrono::steady_clock::now();
  if (options.seqlen < 2) fail_usage(fmt::format("seqlen must be at least 2 (got {})", options.seqlen));
  if (options.seqlen > model.shape().max_positions)
    fail_usage(fmt::format("seqlen {} exceeds the model's {} positions", options.seqlen, model.shape().max_positions));
  int64_t windows = static_cast<int64_t>(stream.size()) / options.seqlen;
  if (options.max_windows > 0) windows = std::min(windows, options.max_windows);
  if (windows == 0)
    fail_input(options.source, "too short for one window", fmt::format("at least {} tokens", options.seqlen),
               fmt::format("{} tokens", stream.size()));
  const at::Tensor ids =
      at::tensor(std::vector<int64_t>(stream.begin(), stream.begin() + windows * options.seqlen), at::kLong)
          .view({windows, options.seqlen});
  const int64_t batch = forward_batch_size(options.batch_size, model.shape(), options.seqlen, windows, model.dtype());
  const int64_t layers = model.shape().num_layers;
  const int64_t steps = layers + 1;

  // Hidden states of all windows, kept on the CPU between blocks (they are the run's only large state).
  BlockRunner runner(model, windows, options.seqlen, batch, activation_budget_bytes(options.activation_memory),
                     spill_file_path());
  runner.embed(ids);
  for (int64_t layer = 0; layer < layers; ++layer) {
    progress.update({"eval", layer, steps, fmt::format("block {}/{}", layer + 1, layers)});
    runner.propagate(model.load_block(layer), /*check_finite=*/false,
                     [&] { check_interrupt(fmt::format("evaluation, block {}", layer)); });
  }
  progress.update({"eval", layers, steps, "head"});
  PerplexityResult result;
  // The output head takes as many windows at a time as kHeadChunkBytes holds of their fp64 logits and log
  // probabilities: one window for OPT's 50272 tokens at 2048 (0.8 GB each), a few for small vocabularies. Each of
  // the three tensors then stays below glibc's largest mmap threshold (32 MiB), so that small models reuse heap
  // pages instead of mapping and zeroing fresh ones for every chunk (stories260k: 89 MB tensors had cost 90,000 page
  // faults, a fifth of its evaluation).
  constexpr int64_t kHeadBytesPerLogit = 3 * sizeof(double);  // logits, log probabilities and one temporary
  constexpr int64_t kHeadChunkBytes = int64_t{24} << 20;
  const int64_t head_windows =
      std::max<int64_t>(1, kHeadChunkBytes / (kHeadBytesPerLogit * options.seqlen * model.shape().vocab_size));
  for (size_t i = 0; i < runner.batches(); ++i) {
    const at::Tensor hidden = runner.activations().get(i);
    for (int64_t w = 0; w < hidden.size(0); w += head_windows) {
      check_interrupt("evaluation (output head)");
      const int64_t n = std::min(head_windows, hidden.size(0) - w);
      const at::Tensor logits = model.logits(hidden.narrow(0, w, n)).to(at::kDouble);
      const int64_t first = static_cast<int64_t>(i) * batch + w;
      const at::Tensor targets = ids.slice(0, first, first + n).slice(1, 1).to(logits.device());
      const at::Tensor logprobs = at::log_softmax(logits.slice(1, 0, options.seqlen - 1), -1);
      const at::Tensor nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).mean(1).cpu();
      for (int64_t k = 0; k < n; ++k) result.window_nll.push_back(nll[k].item<double>());
    }
  }
  progress.update({"eval", steps, steps, "done"});
  progress.finish();
  double sum = 0;
  for (double v : result.window_nll) sum += v;
  result.mean_nll = sum / static_cast<double>(result.window_nll.size());
  if (!std::isfinite(result.mean_nll))
    throw Error(ErrorKind::kNumeric, "evaluation: the model produced non-finite losses (NaN or Inf in the weights?)");
  result.perplexity = std::exp(result.mean_nll);
  result.seqlen = options.seqlen;
  result.windows = windows;
  result.tokens = static_cast<int64_t>(stream.size());
  result.predictions = windows * (options.seqlen - 1);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

PerplexityResult evaluate_model_dir(const std::filesystem::path& model_dir, const EvalRequest& request,
                                    ProgressSink& progress) {
  const Checkpoint checkpoint = Checkpoint::open(model_dir);
  RunOptions run;
  run.device = parse_device(request.device);
  if (!request.dtype.empty()) run.dtype = parse_float_dtype(request.dtype);
  const DecoderModel model(checkpoint, run);
  PerplexityOptions options;
  options.seqlen = request.seqlen;
  if (options.seqlen > model.shape().max_positions) {
    spdlog::info("seqlen {} capped at the model's {} positions", options.seqlen, model.shape().max_positions);
    options.seqlen = model.shape().max_positions;
  }
  options.batch_size = request.batch_size;
  options.max_windows = request.max_windows;
  options.source = request.dataset.string();
  options.activation_memory = request.activation_memory;
  const auto tokenizer =
      load_model_tokenizer(model_dir, request.tokenizer, model.shape().vocab_size, checkpoint.config().path());
  const std::vector<int64_t> stream =
      tokenizer->encode(read_eval_text(request.dataset, request.text_format), /*add_special=*/true);
  return evaluate_perplexity(model, stream, options, progress);
}

}  // namespace optima
