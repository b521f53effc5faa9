// Where a pruning run's results go. An output sink receives them in the order the run produces them (the tensors
// outside the blocks, each pruned block, masks, Hessians), can be suspended into a saved state and restored from
// it, and publishes everything at the end. The checkpoint sink writes a Hugging Face safetensors checkpoint (and
// masks.safetensors, the Hessians' folder and prune_report.json) under temporary names renamed at the end; a run's
// processes other than rank 0 use the null sink. A new output format is one more sink.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "optima/prune/plan.h"
#include "optima/prune/report.h"
#include "optima/prune/resume.h"

namespace optima {

class Checkpoint;
struct ModelShape;
struct BlockWeights;

class OutputSink {
 public:
  virtual ~OutputSink() = default;
  // A fresh run: the tensors outside the blocks (embeddings, norms, head), unchanged. Files that must survive an
  // interruption are kept in the run's work folder `work`, which must outlive the sink's use.
  virtual void begin(const Checkpoint& checkpoint, const ModelShape& shape, const ResumeFolder& work) = 0;
  // A resumed run: continues from what suspend() recorded in `state` (the files are already verified).
  virtual void restore(const RunState& state, const ResumeFolder& work) = 0;
  // The model's side files (config, tokenizer), for fresh and resumed runs alike.
  virtual void copy_side_files(const std::filesystem::path& model_dir) = 0;
  // Block `block.index`: pruned linear weights as given (cast to the stored dtype), every other tensor byte-identical.
  virtual void write_block(const Checkpoint& checkpoint, const ModelShape& shape, const BlockWeights& block) = 0;
  // --save-masks: one layer's mask (bool [out, in], true = pruned).
  virtual void add_mask(const std::string& layer, const at::Tensor& pruned) = 0;
  // --save-hessians: a block's Hessians by site name.
  virtual void add_hessians(int64_t block, const std::map<std::string, at::Tensor>& hessians) = 0;
  // Records in `state` (whose next_block is set) what restore() needs; the files stay in the work folder.
  virtual void suspend(RunState& state) = 0;
  // A failed resumed run: leaves the work folder's files as the saved state describes them.
  virtual void abandon() = 0;
  // Completes the files (shards, masks, Hessians): timed as writing.
  virtual void finish() = 0;
  // Writes the report and moves everything to its final name.
  virtual void publish(const PruneReport& report) = 0;
};

// Rank 0's sink: plan.out (and plan.save_hessians), staged beside their final names (refused when they exist,
// unless plan.overwrite), with the writer's staging files in the run's work folder.
std::unique_ptr<OutputSink> make_checkpoint_output(const PrunePlan& plan);
// The sink of processes that write nothing.
std::unique_ptr<OutputSink> make_null_output();

// Masks packed 8 columns per byte along the input dimension, least significant bit first; 1 = pruned.
at::Tensor pack_mask(const at::Tensor& pruned);

}  // namespace optima
