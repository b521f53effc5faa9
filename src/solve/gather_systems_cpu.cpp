// Gather of a chunk's linear systems on the CPU (see gather_systems.h), and the device dispatch.
#include "gather_systems.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include "optima/core/error.h"
#include "optima/core/parallel.h"

namespace optima::solve_detail {

namespace {

template <typename T>
void gather_rows(const T* source, int64_t n, const int64_t* idx, const int64_t* sizes, int64_t b, int64_t m,
                 bool lower_only, T* out) {
  // One task per (system, matrix row): each reads one row of `source` (n contiguous values, cache resident) at the
  // system's column indices and writes one contiguous row of the output.
  parallel_ranges(b * m, 64, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / m, i = task % m;
      const int64_t size = sizes ? sizes[r] : m;
      const int64_t* cols = idx + r * m;
      T* row = out + task * m;
      const int64_t width = lower_only ? i + 1 : m;
      if (i < size) {
        const T* src = source + cols[i] * n;
        const int64_t real = std::min(width, size);
        for (int64_t j = 0; j < real; ++j) row[j] = src[cols[j]];
        for (int64_t j = real; j < width; ++j) row[j] = T(0);
      } else {
        for (int64_t j = 0; j < width; ++j) row[j] = T(0);
        if (i < width) row[i] = T(1);
      }
    }
  });
}

}  // namespace

void gather_systems_cpu(const at::Tensor& source, const at::Tensor& idx, const at::Tensor& sizes, bool lower_only,
                        at::Tensor& out) {
  const int64_t n = source.size(0), b = idx.size(0), m = idx.size(1);
  const at::Tensor index = idx.contiguous();
  const at::Tensor count = sizes.defined() ? sizes.contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(source.scalar_type(), "gather_systems_cpu", [&] {
    gather_rows<scalar_t>(source.data_ptr<scalar_t>(), n, index.data_ptr<int64_t>(),
                          count.defined() ? count.data_ptr<int64_t>() : nullptr, b, m, lower_only,
                          out.data_ptr<scalar_t>());
  });
}

at::Tensor gather_systems(const at::Tensor& source, const at::Tensor& idx, const at::Tensor& sizes, bool lower_only,
                          at::Tensor* workspace) {
  constexpr const char* where = "gather_systems";
  if (source.dim() != 2 || source.size(0) != source.size(1) || !source.is_contiguous())
    fail(ErrorKind::kInternal, where, "source must be a contiguous square matrix", "[n, n]", source.toString());
  if (source.scalar_type() != at::kFloat && source.scalar_type() != at::kDouble)
    fail(ErrorKind::kInternal, where, "source must be fp32 or fp64", "Float or Double", source.toString());
  if (idx.dim() != 2 || idx.scalar_type() != at::kLong || idx.device() != source.device())
    fail(ErrorKind::kInternal, where, "idx must be int64 [b, m] on the source's device", "Long [b, m]", idx.toString());
  if (sizes.defined() && (sizes.dim() != 1 || sizes.size(0) != idx.size(0) || sizes.scalar_type() != at::kLong ||
                          sizes.device() != source.device()))
    fail(ErrorKind::kInternal, where, "sizes must be int64 [b] on the source's device", "Long [b]", sizes.toString());
  if (!source.is_cpu() && !source.is_cuda())
    fail(ErrorKind::kInternal, where, "unsupported device", "cpu or cuda", source.device().str());
  const int64_t b = idx.size(0), m = idx.size(1), needed = b * m * m;
  at::Tensor out;
  if (workspace && workspace->defined() && workspace->dim() == 1 && workspace->numel() >= needed &&
      workspace->scalar_type() == source.scalar_type() && workspace->device() == source.device()) {
    out = workspace->narrow(0, 0, needed).view({b, m, m});
  } else {
    out = at::empty({needed}, source.options());
    if (workspace) *workspace = out;
    out = out.view({b, m, m});
  }
  if (source.is_cpu())
    gather_systems_cpu(source, idx, sizes, lower_only, out);
  else
    gather_systems_cuda(source, idx, sizes, lower_only, out);
  return out;
}

#ifndef OPTIMA_WITH_CUDA
void gather_systems_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, at::Tensor&) {
  fail(ErrorKind::kInternal, "gather_systems", "this optima was built without CUDA sources", "a CUDA build",
       "a CPU-only build");
}
#endif

}  // namespace optima::solve_detail
