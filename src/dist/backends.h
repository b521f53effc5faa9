// The c10d backends this build can make. Each lives in its own file because its LibTorch header needs its
// library's own headers (Gloo's for ProcessGroupGloo, NCCL's for ProcessGroupNCCL), which CMake finds and checks
// (OPTIMA_HAS_GLOO, OPTIMA_HAS_NCCL); the rest of optima uses the backends through c10d::Backend only.
#pragma once

#include <c10/core/Device.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <string>

namespace optima::dist_detail {

// Gloo over TCP. `master_addr` decides the network device: a loopback master keeps all traffic on the loopback
// interface; otherwise GLOO_SOCKET_IFNAME names the interface, else the address this machine's hostname resolves to.
c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                    std::chrono::milliseconds timeout, const std::string& master_addr);

// NCCL on `device` (a CUDA device, one per process; without an index, the local rank's) made this process's
// current device, so that tensors on "cuda" land there.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                    std::chrono::milliseconds timeout, const c10::Device& device,
                                                    int local_rank);

}  // namespace optima::dist_detail
