// Gather of a chunk's linear systems on CUDA: the twin of gather_systems_cpu.cpp (see gather_systems.h), checked
// against it by tests/unit/test_solve.cpp where a GPU is present.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>

#include "gather_systems.h"

namespace optima::solve_detail {

namespace {

// One block per (system, matrix row); its threads stride over the row's columns, so reads of `source` stay within
// one of its rows and writes are coalesced.
template <typename T>
__global__ void gather_rows_kernel(const T* __restrict__ source, int64_t n, const int64_t* __restrict__ idx,
                                   const int64_t* __restrict__ sizes, int64_t m, bool lower_only, T* __restrict__ out) {
  const int64_t task = blockIdx.x;
  const int64_t r = task / m, i = task % m;
  const int64_t size = sizes ? sizes[r] : m;
  const int64_t* cols = idx + r * m;
  T* row = out + task * m;
  const int64_t width = lower_only ? i + 1 : m;
  if (i < size) {
    const T* src = source + cols[i] * n;
    for (int64_t j = threadIdx.x; j < width; j += blockDim.x) row[j] = j < size ? src[cols[j]] : T(0);
  } else {
    for (int64_t j = threadIdx.x; j < width; j += blockDim.x) row[j] = j == i ? T(1) : T(0);
  }
}

template <typename T>
void launch(const at::Tensor& source, const at::Tensor& idx, const at::Tensor& sizes, bool lower_only,
            at::Tensor& out) {
  const int64_t b = idx.size(0), m = idx.size(1);
  if (b * m == 0) return;
  TORCH_CHECK(b * m <= std::numeric_limits<int32_t>::max(), "gather_systems_cuda: too many rows in one chunk");
  const int threads = m >= 256 ? 256 : (m >= 64 ? 64 : 32);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(source.device().index()).stream();
  gather_rows_kernel<T><<<static_cast<unsigned>(b * m), threads, 0, stream>>>(
      source.data_ptr<T>(), source.size(0), idx.data_ptr<int64_t>(),
      sizes.defined() ? sizes.data_ptr<int64_t>() : nullptr, m, lower_only, out.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void gather_systems_cuda(const at::Tensor& source, const at::Tensor& idx, const at::Tensor& sizes, bool lower_only,
                         at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(source.device());
  const at::Tensor index = idx.contiguous();
  const at::Tensor count = sizes.defined() ? sizes.contiguous() : at::Tensor();
  if (source.scalar_type() == at::kDouble)
    launch<double>(source, index, count, lower_only, out);
  else
    launch<float>(source, index, count, lower_only, out);
}

}  // namespace optima::solve_detail
