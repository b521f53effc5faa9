// The diagonal blocks of the masked triangular passes on CUDA: the twin of masked_cholesky_cpu.cpp (see
// masked_cholesky.h), checked against it by tests/unit/test_solve.cpp where a GPU is present.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>

#include "masked_cholesky.h"

namespace optima::solve_detail {

namespace {

// One thread per row: a row's block is a chain of dependent steps, and the rows are many (hundreds to thousands).
// The block of L (at most 128 x 128) is read by every thread and stays in the cache.
template <typename T>
__global__ void forward_kernel(MaskedBlock<T> b) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= b.rows) return;
  const T* off = b.off + r * b.off_stride;
  const T* kept = b.kept + r * b.stride;
  T* z = b.out + r * b.stride;
  for (int64_t i = 0; i < b.size; ++i) {
    const T* li = b.l + i * b.ld;
    T t = off[i];
    for (int64_t j = 0; j < i; ++j) t += li[j] * z[j];
    const T rhs = b.rhs != nullptr ? b.rhs[r * b.stride + i] : T(0);
    const T given = b.given != nullptr ? b.given[r * b.stride + i] : T(0);
    z[i] = kept[i] != T(0) ? (rhs - t) / li[i] : given;
  }
}

// Descending; t_j for j < i is accumulated in `sums` (or `out`'s S entries' place is not free, so sums must be
// given: masked_backward always allocates them on CUDA).
template <typename T>
__global__ void backward_kernel(MaskedBlock<T> b) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= b.rows) return;
  const T* off = b.off + r * b.off_stride;
  const T* kept = b.kept + r * b.stride;
  T* x = b.out + r * b.stride;
  T* t = b.sums + r * b.stride;
  for (int64_t i = 0; i < b.size; ++i) t[i] = off[i];
  for (int64_t i = b.size - 1; i >= 0; --i) {
    const T* li = b.l + i * b.ld;
    const T rhs = b.rhs != nullptr ? b.rhs[r * b.stride + i] : T(0);
    const T xi = kept[i] != T(0) ? (rhs - t[i]) / li[i] : T(0);
    x[i] = xi;
    t[i] += li[i] * xi;
    if (xi != T(0))
      for (int64_t j = 0; j < i; ++j) t[j] += li[j] * xi;
  }
}

}  // namespace

template <typename T>
void masked_block_cuda(const MaskedBlock<T>& block, bool backward) {
  if (block.rows == 0) return;
  TORCH_CHECK(block.rows <= std::numeric_limits<int32_t>::max(), "masked_block_cuda: too many rows");
  TORCH_CHECK(!backward || block.sums != nullptr, "masked_block_cuda: the backward pass needs its sums");
  constexpr int kThreads = 128;
  const auto grid = static_cast<unsigned>((block.rows + kThreads - 1) / kThreads);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  if (backward)
    backward_kernel<T><<<grid, kThreads, 0, stream>>>(block);
  else
    forward_kernel<T><<<grid, kThreads, 0, stream>>>(block);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
template void masked_block_cuda<float>(const MaskedBlock<float>&, bool);
template void masked_block_cuda<double>(const MaskedBlock<double>&, bool);

}  // namespace optima::solve_detail
