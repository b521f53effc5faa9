// ProcessGroupNCCL, compiled only in CUDA builds where CMake found NCCL's header (the one LibTorch's wheel ships,
// so that NCCL's configuration struct inside the backend's Options has LibTorch's layout) and checked that
// LibTorch's ProcessGroupNCCL.hpp compiles (OPTIMA_HAS_NCCL). NCCL itself comes with LibTorch's CUDA libraries.
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <algorithm>

#include "backends.h"

namespace optima::dist_detail {

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                    std::chrono::milliseconds timeout, const c10::Device& device,
                                                    int local_rank) {
  // NCCL binds a communicator to the current device and refuses two processes on one device: each process of a
  // machine takes the device of its local rank.
  const int count = std::max<int>(1, c10::cuda::device_count());
  const c10::Device bound(c10::kCUDA,
                          device.has_index() ? device.index() : static_cast<c10::DeviceIndex>(local_rank % count));
  c10::cuda::set_device(bound.index());
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
  backend->setBoundDeviceId(bound);
  return backend;
}

}  // namespace optima::dist_detail
