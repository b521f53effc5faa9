// Running Hessian and column-norm statistics (see accumulator.h).
#include "optima/stats/accumulator.h"

#include <ATen/ATen.h>

#include <cmath>

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
  const int64_t b = batch3.size(0);
  const at::Tensor rows =
      batch3.reshape({-1, batch3.size(-1)}).to(hessian_.defined() ? hessian_.device() : column_norms_.device(), dtype_);
  if (!at::isfinite(rows).all().item<bool>()) non_finite_ = true;
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
  if (!non_finite_ && ((hessian_.defined() && !at::isfinite(hessian_).all().item<bool>()) ||
                       (column_norms_.defined() && !at::isfinite(column_norms_).all().item<bool>())))
    non_finite_ = true;
}

}  // namespace optima
