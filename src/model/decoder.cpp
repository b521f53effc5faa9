// Block-by-block forward pass of a decoder-only model (see decoder.h): loading and checking weights here, the
// computing in the model's family.
#include "optima/model/decoder.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "families/ops.h"
#include "optima/core/error.h"
#include "optima/core/finite.h"
#include "optima/io/tensor.h"

namespace optima {

c10::ScalarType default_compute_dtype(c10::ScalarType stored, c10::Device device) {
  const bool half = stored == at::kHalf || stored == at::kBFloat16;
  if (!half || !device.is_cpu()) return stored;
  spdlog::info("computing in float32: the checkpoint's {} has no fast matrix products on the CPU (--dtype {} keeps it)",
               c10::toString(stored), stored == at::kHalf ? "float16" : "bfloat16");
  return at::kFloat;
}

DecoderModel::DecoderModel(const Checkpoint& checkpoint, RunOptions options)
    : checkpoint_(checkpoint), shape_(read_model_shape(checkpoint.config())), options_(options) {
  validate_checkpoint(checkpoint_, shape_);
  dtype_ = options_.dtype;
  if (dtype_ == c10::ScalarType::Undefined) {
    const std::string first = block_prefix(shape_, 0) + linear_layers(shape_)[0].name + ".weight";
    dtype_ = default_compute_dtype(to_scalar_type(checkpoint_.find(first)->dtype), options_.device);
  }
  GlobalWeights globals;
  for (const ExpectedTensor& t : global_tensors(shape_)) globals.emplace(t.name, load(t.name));
  forward_ = shape_.family->make_forward(shape_, std::move(globals), options_.device);
}

at::Tensor DecoderModel::load(const std::string& name) const {
  const at::Tensor stored = checkpoint_.load(name);
  at::Tensor value = stored.to(options_.device, dtype_);
  if (!options_.allow_non_finite && !all_finite(value)) {
    const CheckpointTensor* t = checkpoint_.find(name);
    const bool cast_overflowed = stored.scalar_type() != dtype_ && all_finite(stored);
    throw Error(
        ErrorKind::kNumeric,
        describe(fmt::format("{}: tensor '{}'", checkpoint_.weight_files()[t->file_index].string(), name),
                 cast_overflowed
                     ? fmt::format("holds values too large for {} (Inf after the cast)", c10::toString(dtype_))
                     : "holds NaN or Inf values",
                 "finite values (or pass --allow-non-finite)",
                 fmt::format("{} non-finite of {}", (~at::isfinite(value)).sum().item<int64_t>(), value.numel())));
  }
  return value;
}

BlockWeights DecoderModel::load_block(int64_t index) const {
  if (index < 0 || index >= shape_.num_layers)
    fail(ErrorKind::kInternal, "load_block", "block index out of range", fmt::format("< {}", shape_.num_layers),
         std::to_string(index));
  BlockWeights block;
  block.index = index;
  const std::string prefix = block_prefix(shape_, index);
  for (const ExpectedTensor& t : block_tensors(shape_, index))
    block.tensors.emplace(t.name.substr(prefix.size()), load(t.name));
  return block;
}

at::Tensor DecoderModel::linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return ops::linear(x, weight, bias);
}

at::Tensor DecoderModel::embed(const at::Tensor& ids) const {
  const at::Tensor tokens = ids.to(options_.device, at::kLong);
  if (tokens.numel() > 0) {
    const int64_t low = tokens.min().item<int64_t>(), high = tokens.max().item<int64_t>();
    if (low < 0 || high >= shape_.vocab_size)
      fail_input(checkpoint_.dir().string(),
                 "token id outside the model's vocabulary (is the tokenizer or calibration file the model's own?)",
                 fmt::format("ids in [0, {})", shape_.vocab_size), std::to_string(low < 0 ? low : high));
  }
  return forward_->embed(tokens);
}

at::Tensor DecoderModel::block_forward(const BlockWeights& b, const at::Tensor& hidden, const SiteHook& hook) const {
  return forward_->block(b, hidden.to(options_.device, dtype_), hook);
}

at::Tensor DecoderModel::logits(const at::Tensor& hidden) const {
  return forward_->logits(hidden.to(options_.device, dtype_)).to(at::kFloat);
}

at::Tensor DecoderModel::forward(const at::Tensor& ids) const {
  at::Tensor h = embed(ids);
  for (int64_t i = 0; i < shape_.num_layers; ++i) h = block_forward(load_block(i), h);
  return logits(h);
}

}  // namespace optima
