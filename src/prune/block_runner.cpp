// Token windows through a model block by block, with their activations kept between blocks (see block_runner.h).
#include "optima/prune/block_runner.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "optima/core/defaults.h"
#include "optima/core/error.h"
#include "optima/core/finite.h"
#include "optima/core/resources.h"
#include "optima/model/arch.h"

namespace optima {

namespace {

std::vector<std::vector<int64_t>> batch_shapes(int64_t windows, int64_t seqlen, int64_t batch_size, int64_t hidden) {
  std::vector<std::vector<int64_t>> shapes;
  for (int64_t b = 0; b < windows; b += batch_size)
    shapes.push_back({std::min(batch_size, windows - b), seqlen, hidden});
  return shapes;
}

int64_t block_weight_bytes(const ModelShape& shape, c10::ScalarType dtype) {
  int64_t parameters = 0;
  for (const LinearLayer& layer : linear_layers(shape)) parameters += layer.out_features * layer.in_features;
  return parameters * static_cast<int64_t>(c10::elementSize(dtype));
}

}  // namespace

int64_t forward_batch_size(int64_t requested, const ModelShape& shape, int64_t seqlen, int64_t windows,
                           c10::ScalarType dtype) {
  if (requested > 0) return requested;
  if (windows <= 0) return 1;
  const auto element = static_cast<int64_t>(c10::elementSize(dtype));
  const int64_t per_window =
      element * (seqlen * (5 * shape.hidden_size + 3 * shape.intermediate_size) + shape.num_heads * seqlen * seqlen);
  const int64_t fit =
      std::max<int64_t>(1, static_cast<int64_t>(kDefaultBatchMemory) / std::max<int64_t>(1, per_window));
  const int64_t batches = (windows + fit - 1) / fit;
  return (windows + batches - 1) / batches;
}

BlockRunner::BlockRunner(const DecoderModel& model, int64_t windows, int64_t seqlen, int64_t batch_size,
                         uint64_t budget_bytes, const std::filesystem::path& spill_file)
    : model_(model),
      batch_size_(batch_size),
      store_(std::make_unique<ActivationStore>(batch_shapes(windows, seqlen, batch_size, model.shape().hidden_size),
                                               model.dtype(), budget_bytes, spill_file)) {
  fit_allocator_to_block(block_weight_bytes(model.shape(), model.dtype()));
}

void BlockRunner::embed(const at::Tensor& ids) {
  for (size_t i = 0; i < store_->size(); ++i) {
    const int64_t begin = static_cast<int64_t>(i) * batch_size_;
    store_->set(i, model_.embed(ids.slice(0, begin, std::min(begin + batch_size_, ids.size(0)))));
    store_->release(i);
  }
}

void BlockRunner::observe(const BlockWeights& block, const SiteHook& hook, const std::function<void()>& before_batch) {
  for (size_t i = 0; i < store_->size(); ++i) {
    if (before_batch) before_batch();
    model_.block_forward(block, store_->get(i), hook);
    store_->release(i);
  }
}

void BlockRunner::propagate(const BlockWeights& block, bool check_finite, const std::function<void()>& before_batch) {
  for (size_t i = 0; i < store_->size(); ++i) {
    if (before_batch) before_batch();
    const at::Tensor h = model_.block_forward(block, store_->get(i));
    if (check_finite && !all_finite(h))
      throw Error(ErrorKind::kNumeric,
                  fmt::format("block {}: the pruned block produced NaN or Inf activations; stopping", block.index));
    store_->set(i, h);
    store_->release(i);
  }
}

}  // namespace optima
