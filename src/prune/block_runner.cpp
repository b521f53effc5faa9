// Token windows through a model block by block, with their activations kept between blocks (see block_runner.h).
#include "optima/prune/block_runner.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "optima/core/defaults.h"
#include "optima/core/error.h"
#include "optima/core/finite.h"
#include "optima/core/resources.h"
#include "optima/core/threads.h"
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

// A small model's block runs on slices of a batch's windows, one slice per thread, each slice's operations on its
// thread alone (ATen runs operations inside a parallel region single-threaded): its operations are too small to
// share (stories260k: 2.8 s of forward passes on 2 threads against 2.7 s on one when each operation was shared).
// A window's arithmetic is the same as in the whole batch but for how the matrix products group their sums.
// With a hook, each slice's site inputs are kept and shown to the hook afterwards, slice by slice in window order, on
// one thread: every site's statistics then see the windows in the order a single pass shows them.
at::Tensor forward_in_slices(const DecoderModel& model, const BlockWeights& block, const at::Tensor& hidden,
                             const SiteHook& hook = {}) {
  const int64_t windows = hidden.size(0), slices = std::min<int64_t>(at::get_num_threads(), windows);
  if (slices <= 1) return model.block_forward(block, hidden, hook);
  std::vector<at::Tensor> outputs(static_cast<size_t>(slices));
  std::vector<std::vector<std::pair<InputSite, at::Tensor>>> seen(static_cast<size_t>(slices));
  at::parallel_for(0, slices, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const int64_t first = s * windows / slices, last = (s + 1) * windows / slices;
      auto& inputs = seen[static_cast<size_t>(s)];
      const SiteHook keep = [&inputs](InputSite site, const at::Tensor& x) { inputs.emplace_back(site, x); };
      outputs[static_cast<size_t>(s)] =
          model.block_forward(block, hidden.slice(0, first, last), hook ? keep : SiteHook{});
    }
  });
  if (hook) {
    const SerialScope serial(true);
    for (const auto& inputs : seen)
      for (const auto& [site, x] : inputs) hook(site, x);
  }
  return at::cat(outputs, 0);
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
  const int64_t weight_bytes = block_weight_bytes(model.shape(), model.dtype());
  fit_allocator_to_block(weight_bytes);
  slice_windows_ = weight_bytes <= kSmallBlockBytes && model.options().device.is_cpu();
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
    if (slice_windows_)
      forward_in_slices(model_, block, store_->get(i), hook);
    else
      model_.block_forward(block, store_->get(i), hook);
    store_->release(i);
  }
}

void BlockRunner::propagate(const BlockWeights& block, bool check_finite, const std::function<void()>& before_batch) {
  for (size_t i = 0; i < store_->size(); ++i) {
    if (before_batch) before_batch();
    const at::Tensor h =
        slice_windows_ ? forward_in_slices(model_, block, store_->get(i)) : model_.block_forward(block, store_->get(i));
    if (check_finite && !all_finite(h))
      throw Error(ErrorKind::kNumeric,
                  fmt::format("block {}: the pruned block produced NaN or Inf activations; stopping", block.index));
    store_->set(i, h);
    store_->release(i);
  }
}

}  // namespace optima
