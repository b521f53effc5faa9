// The checkpoint output of a pruning run and the null output (see output.h).
#include "optima/prune/output.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <set>
#include <string>

#include "optima/core/byte_size.h"
#include "optima/core/error.h"
#include "optima/io/checkpoint.h"
#include "optima/io/checkpoint_writer.h"
#include "optima/io/output_dir.h"
#include "optima/io/safetensors.h"
#include "optima/io/tensor.h"
#include "optima/model/decoder.h"

namespace optima {
namespace fs = std::filesystem;

at::Tensor pack_mask(const at::Tensor& pruned) {
  const int64_t in = pruned.size(1), padded = (in + 7) / 8 * 8;
  at::Tensor bits = at::zeros({pruned.size(0), padded}, pruned.options().dtype(at::kLong));
  bits.slice(1, 0, in).copy_(pruned.to(at::kLong));
  const at::Tensor weights = at::pow(2, at::arange(8, bits.options()));
  return (bits.view({pruned.size(0), padded / 8, 8}) * weights).sum(-1).to(at::kByte).cpu();
}

namespace {

std::string block_file_name(const char* what, int64_t block) {
  return fmt::format("{}-block-{:04d}.safetensors", what, block);
}

void write_masks(const fs::path& file, const std::map<std::string, at::Tensor>& masks,
                 const std::map<std::string, std::string>& metadata) {
  std::vector<TensorBytes> bytes;
  bytes.reserve(masks.size());
  for (const auto& [name, m] : masks) bytes.push_back(tensor_bytes(name, m));
  write_safetensors(file, bytes, metadata);
}

class CheckpointOutput final : public OutputSink {
 public:
  explicit CheckpointOutput(const PrunePlan& plan)
      : staged_(plan.out, plan.overwrite, plan.model), save_masks_(plan.save_masks) {
    writer_options_.max_shard_bytes = parse_byte_size(plan.max_shard_size);
    if (!plan.save_hessians.empty()) hessian_dir_.emplace(plan.save_hessians, plan.overwrite, plan.model);
  }

  void begin(const Checkpoint& checkpoint, const ModelShape& shape, const ResumeFolder& work) override {
    work_ = &work;
    writer_ = std::make_unique<CheckpointWriter>(staged_.staging(), writer_options_, work.path());
    for (const ExpectedTensor& t : global_tensors(shape)) writer_->add(t.name, checkpoint.load(t.name));
    // A stored lm_head that the config ties to the embeddings is carried over unchanged too.
    if (shape.tie_word_embeddings && checkpoint.find("lm_head.weight"))
      writer_->add("lm_head.weight", checkpoint.load("lm_head.weight"));
    if (shape.copy_other_tensors) copy_other_tensors(checkpoint, shape);
  }

  // Every stored tensor the family does not declare (a multimodal model's vision tower), unchanged, before the
  // blocks, so that a resumed run finds them in the writer already.
  void copy_other_tensors(const Checkpoint& checkpoint, const ModelShape& shape) {
    std::set<std::string> declared{"lm_head.weight"};
    for (const ExpectedTensor& t : expected_tensors(shape)) declared.insert(t.name);
    for (const CheckpointTensor& t : checkpoint.tensors())
      if (!declared.count(t.name)) writer_->add(t.name, checkpoint.load(t.name));
  }

  void restore(const RunState& state, const ResumeFolder& work) override {
    work_ = &work;
    writer_ = CheckpointWriter::resume(staged_.staging(), writer_options_, work.path(), state.writer.value());
    if (state.masks) {
      const auto file = SafetensorsFile::open(work.path() / *state.masks);
      for (const TensorInfo& info : file->tensors())
        masks_.emplace(info.name, tensor_from_bytes(info, file->data(info), file->mapping()).clone());
    }
    for (const auto& [name, record] : state.files.items())
      if (name.rfind("hessians-", 0) == 0) hessian_files_[name] = record;
  }

  void copy_side_files(const fs::path& model_dir) override { copy_model_side_files(model_dir, staged_.staging()); }

  void write_block(const Checkpoint& checkpoint, const ModelShape& shape, const BlockWeights& block) override {
    const std::string prefix = block_prefix(shape, block.index);
    const std::vector<LinearLayer> linears = linear_layers(shape);
    for (const ExpectedTensor& t : block_tensors(shape, block.index)) {
      const std::string relative = t.name.substr(prefix.size());
      const bool pruned_linear = std::any_of(linears.begin(), linears.end(),
                                             [&](const LinearLayer& l) { return l.name + ".weight" == relative; });
      const CheckpointTensor* stored = checkpoint.find(t.name);
      writer_->add(t.name, pruned_linear ? block.get(relative).to(at::kCPU, to_scalar_type(stored->dtype))
                                         : checkpoint.load(t.name));
    }
  }

  void add_mask(const std::string& layer, const at::Tensor& pruned) override {
    if (save_masks_) masks_.emplace(layer + ".mask", pack_mask(pruned));
  }

  void add_hessians(int64_t block, const std::map<std::string, at::Tensor>& hessians) override {
    if (!hessian_dir_ || hessians.empty()) return;
    // Kept in the work folder until the run completes, so that a resumed run still has them.
    std::vector<TensorBytes> bytes;
    bytes.reserve(hessians.size());
    for (const auto& [name, h] : hessians) bytes.push_back(tensor_bytes(name, h));
    const std::string name = block_file_name("hessians", block);
    write_safetensors(work_->path() / name, bytes,
                      {{"format", "pt"}, {"scaling", "H = (2/n) sum over samples of X^T X, n = samples"}});
    hessian_files_[name] = work_->describe_file(name);
  }

  void suspend(RunState& state) override {
    state.writer = writer_->suspend();
    for (const auto& [name, record] : hessian_files_.items()) state.files[name] = record;
    if (!save_masks_) return;
    std::map<std::string, at::Tensor> done;
    for (const auto& entry : masks_) {
      const std::string& mask_name = entry.first;  // not a structured binding: clang 14 cannot capture one
      if (std::any_of(state.layers.begin(), state.layers.end(),
                      [&](const LayerReport& l) { return l.name + ".mask" == mask_name; }))
        done.emplace(mask_name, entry.second);
    }
    const std::string name = block_file_name("masks", state.next_block);
    write_masks(work_->path() / name, done, {{"format", "optima-masks"}});
    state.files[name] = work_->describe_file(name);
    state.masks = name;
  }

  void abandon() override {
    try {
      if (writer_) (void)writer_->suspend();
    } catch (const Error&) {
    }
  }

  void finish() override {
    writer_->finish();
    if (hessian_dir_)
      for (const auto& [name, record] : hessian_files_.items()) {
        std::error_code ec;
        fs::rename(work_->path() / name, hessian_dir_->staging() / name, ec);
        if (ec) throw Error(ErrorKind::kIo, describe((hessian_dir_->staging() / name).string(), ec.message()));
      }
    if (save_masks_ && !masks_.empty())
      write_masks(staged_.staging() / "masks.safetensors", masks_,
                  {{"format", "optima-masks"},
                   {"packing", "uint8 [out, ceil(in/8)]: bit i of byte k is input column 8k+i; 1 = pruned"}});
  }

  void publish(const PruneReport& report) override {
    write_text_file(staged_.staging() / "prune_report.json", report.to_json().dump(2) + "\n");
    staged_.commit();
    if (hessian_dir_) hessian_dir_->commit();
  }

 private:
  StagedDirectory staged_;
  std::optional<StagedDirectory> hessian_dir_;
  bool save_masks_;
  const ResumeFolder* work_ = nullptr;  // set by begin() or restore()
  CheckpointWriterOptions writer_options_;
  std::unique_ptr<CheckpointWriter> writer_;
  std::map<std::string, at::Tensor> masks_;
  nlohmann::json hessian_files_ = nlohmann::json::object();  // per-block files of the work folder
};

class NullOutput final : public OutputSink {
 public:
  void begin(const Checkpoint&, const ModelShape&, const ResumeFolder&) override {}
  void restore(const RunState&, const ResumeFolder&) override {}
  void copy_side_files(const fs::path&) override {}
  void write_block(const Checkpoint&, const ModelShape&, const BlockWeights&) override {}
  void add_mask(const std::string&, const at::Tensor&) override {}
  void add_hessians(int64_t, const std::map<std::string, at::Tensor>&) override {}
  void suspend(RunState&) override {}
  void abandon() override {}
  void finish() override {}
  void publish(const PruneReport&) override {}
};

}  // namespace

std::unique_ptr<OutputSink> make_checkpoint_output(const PrunePlan& plan) {
  return std::make_unique<CheckpointOutput>(plan);
}

std::unique_ptr<OutputSink> make_null_output() {
  return std::make_unique<NullOutput>();
}

}  // namespace optima
