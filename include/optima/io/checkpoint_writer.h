// Writes a Hugging Face safetensors checkpoint tensor by tensor, in size-capped shards.
//
// Tensors are appended to per-shard staging files as they are produced (so a pruning run holds one block at a
// time, never a whole shard); finish() lays each shard out as the reference writer does, writes the index when
// there is more than one shard, and removes the staging files. The writer works inside a directory the caller
// stages (see StagedDirectory), so nothing appears under the final name before the run completes.
//
// The staging files may live in a separate folder (a pruning run's resumable work folder): suspend() then keeps
// them and describes them (tensors, offsets, SHA-256 of the bytes so far) so that resume() can continue appending
// to the same files in a later process, giving the same checkpoint bytes as an uninterrupted run.
#pragma once

#include <ATen/core/Tensor.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "optima/core/defaults.h"

namespace optima {

struct CheckpointWriterOptions {
  uint64_t max_shard_bytes = kDefaultMaxShardBytes;
  std::map<std::string, std::string> metadata{{"format", "pt"}};
};

class CheckpointWriter {
 public:
  // `staging_dir` (default: `dir`) holds the staging files until finish().
  CheckpointWriter(std::filesystem::path dir, CheckpointWriterOptions options = {},
                   std::filesystem::path staging_dir = {});
  // Continues the writer that suspend() described in `state`, after checking every staging file's size and
  // SHA-256 (an input error naming the file when either differs). Bytes past the recorded size are discarded.
  static std::unique_ptr<CheckpointWriter> resume(std::filesystem::path dir, CheckpointWriterOptions options,
                                                  std::filesystem::path staging_dir, const nlohmann::json& state);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Appends one tensor (any device; copied to CPU, dtype kept). Names must be unique.
  void add(const std::string& name, const at::Tensor& tensor);
  // Writes the shards and, when sharded, model.safetensors.index.json. Returns the weight files written.
  std::vector<std::filesystem::path> finish();
  // Flushes the staging files to disk and describes them for resume(); the writer keeps them when destroyed and
  // accepts no more tensors.
  nlohmann::json suspend();

 private:
  struct Shard;
  std::filesystem::path dir_;
  std::filesystem::path staging_dir_;
  CheckpointWriterOptions options_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::map<std::string, size_t> shard_of_;
  bool finished_ = false;
};

struct RewriteOptions {
  uint64_t max_shard_bytes = kDefaultMaxShardBytes;
  std::optional<at::ScalarType> dtype;  // cast floating-point tensors; keep the stored types when absent
  bool overwrite = false;
};

class Checkpoint;
// Writes `checkpoint` as a (sharded) safetensors checkpoint at `out` with config and tokenizer files: converts
// pytorch_model.bin checkpoints, reshards, or changes the floating-point dtype. One tensor in memory at a time.
void rewrite_checkpoint(const Checkpoint& checkpoint, const std::filesystem::path& out, const RewriteOptions& options);

// Copies config.json and tokenizer files (model_side_files) from one model directory to another.
void copy_model_side_files(const std::filesystem::path& from, const std::filesystem::path& to);

}  // namespace optima
