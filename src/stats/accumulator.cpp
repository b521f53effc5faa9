// Running Hessian and column-norm statistics (see accumulator.h).
#include "optima/stats/accumulator.h"

#include <ATen/ATen.h>

#include <cmath>

#include "optima/core/finite.h"
#include "optima/core/threads.h"

namespace optima {

InputStatistics::InputStatistics(int64_t features, c10::Device device, bool hessian, bool column_norms,
                                 c10::ScalarType dtype)
    : dtype_(dtype) {
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  if (hessian) hessian_ = at::zeros({features, features}, options);
  if (column_norms) column_norms_ = at::zeros({features}, options);
}

void InputStatistics::add(const at::Tensor& x) {
  const at::Tensor batch3 = x.dim() == 2 ? x.unsqueeze(0) : x;
  // Converted a sample at a time: the whole batch in fp64 (45 MiB for stories260k's 128 windows at its MLP width)
  // lands above glibc's mmap threshold and costs fresh zeroed pages on every call.
  if (!all_finite(batch3)) non_finite_ = true;
  const c10::Device device = hessian_.defined() ? hessian_.device() : column_norms_.device();
  // A sample's update is a few short operations; below kSerialWorkLimit multiply-adds (tokens x features²), waking
  // the other threads for each costs more than they share (stories260k, 2 threads: 0.15 s of statistics per block
  // against 0.07 s on one).
  const SerialScope serial(batch3.size(1) * batch3.size(2) * batch3.size(2) <= kSerialWorkLimit);
  for (int64_t s = 0; s < batch3.size(0); ++s) add_sample(batch3[s].to(device, dtype_));
  if (!non_finite_ &&
      ((hessian_.defined() && !all_finite(hessian_)) || (column_norms_.defined() && !all_finite(column_norms_))))
    non_finite_ = true;
}

void InputStatistics::add_sample(const at::Tensor& rows) {
  const int64_t b = 1;
  const double old_weight = static_cast<double>(samples_) / static_cast<double>(samples_ + b);
  samples_ += b;
  tokens_ += rows.size(0);
  if (hessian_.defined()) {
    hessian_.mul_(old_weight);
    const at::Tensor scaled = rows * std::sqrt(2.0 / static_cast<double>(samples_));
    hessian_.addmm_(scaled.t(), scaled);
  }
  if (column_norms_.defined()) {
    column_norms_.mul_(old_weight);
    column_norms_.add_(rows.pow(2).sum(0) / static_cast<double>(samples_));
  }
}

void InputStatistics::pool(const std::function<void(std::vector<at::Tensor>&)>& sum_over_shares) {
  const c10::Device device = hessian_.defined() ? hessian_.device() : column_norms_.device();
  // Counts travel as fp64, exact far beyond any calibration set.
  std::vector<at::Tensor> parts{
      at::tensor({static_cast<double>(samples_), static_cast<double>(tokens_), non_finite_ ? 1.0 : 0.0}, at::kDouble)
          .to(device)};
  const double own = static_cast<double>(samples_);
  if (hessian_.defined()) parts.push_back(hessian_.mul_(own));
  if (column_norms_.defined()) parts.push_back(column_norms_.mul_(own));
  sum_over_shares(parts);
  const at::Tensor counts = parts[0].cpu();
  samples_ = static_cast<int64_t>(counts[0].item<double>());
  tokens_ = static_cast<int64_t>(counts[1].item<double>());
  non_finite_ = counts[2].item<double>() > 0;
  const double total = samples_ > 0 ? static_cast<double>(samples_) : 1.0;
  size_t next = 1;
  if (hessian_.defined()) hessian_ = parts[next++].div_(total);
  if (column_norms_.defined()) column_norms_ = parts[next++].div_(total);
}

}  // namespace optima
