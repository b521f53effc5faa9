// A Hugging Face model directory: config.json plus weights in safetensors (single or sharded) or
// pytorch_model.bin (single or sharded, read through LibTorch's unpickler).
//
// Opening validates every weight file's header (safetensors) or structure (.bin) up front, so a broken checkpoint
// fails before hours of work rather than during them. Tensors are then loaded one at a time on demand: zero-copy
// from the mapping for safetensors, so peak memory follows what the caller keeps, not the model size.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "optima/io/dtype.h"
#include "optima/io/model_config.h"

namespace optima {

enum class WeightFormat { kSafetensors, kPytorchBin };

struct CheckpointTensor {
  std::string name;         // canonical name, e.g. "model.layers.0.self_attn.q_proj.weight"
  std::string stored_name;  // the name inside the file (OPT .bin files omit the "model." prefix)
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  size_t file_index = 0;  // into weight_files()

  int64_t numel() const;
};

class Checkpoint {
 public:
  // Opens a model directory; every problem is an input error naming the directory, file, key or tensor.
  static Checkpoint open(const std::filesystem::path& dir);
  ~Checkpoint();
  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;

  const std::filesystem::path& dir() const;
  const ModelConfig& config() const;
  WeightFormat format() const;
  bool sharded() const { return weight_files().size() > 1; }
  const std::vector<std::filesystem::path>& weight_files() const;
  // Sorted by canonical name.
  const std::vector<CheckpointTensor>& tensors() const;
  // nullptr when absent.
  const CheckpointTensor* find(std::string_view name) const;
  // The tensor on CPU in its stored dtype; an input error naming the checkpoint when absent.
  at::Tensor load(std::string_view name) const;
  // Drops the resident pages of every mapped weight file (MappedFile::drop_resident_pages): called between blocks,
  // it keeps the process's memory at about one block whatever the model's size.
  void drop_resident_pages() const;
  // Sum of the elements of every stored tensor (a tied lm_head is stored once).
  int64_t parameter_count() const;

 private:
  struct Impl;
  explicit Checkpoint(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Names of the files besides the weights that a written checkpoint carries over from its source
// (config, generation config, tokenizer files), when present.
std::vector<std::string> model_side_files(const std::filesystem::path& dir);

}  // namespace optima
