// Many processes, one job: a run split across the processes that torchrun or srun started. Which process this is
// and where the others are come from the launcher's environment variables; the collectives are LibTorch's c10d
// (Gloo for CPU tensors, NCCL for CUDA tensors) behind a TCPStore rendezvous that rank 0 serves. Without those
// variables a process is a job of one and every collective returns its input.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace optima {

// What the launcher said about this process.
struct LaunchEnvironment {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;       // among the processes on this machine (LOCAL_RANK, SLURM_LOCALID): picks a CUDA device
  std::string master_addr;  // host of rank 0, which serves the rendezvous store
  int master_port = 0;
  // The variables that were read: "RANK/WORLD_SIZE" (torchrun, or set by hand), "SLURM_PROCID/SLURM_NTASKS" (srun),
  // or empty (none: one process).
  std::string source;
};

// Reads, in order:
//   - RANK and WORLD_SIZE (both, or neither), with MASTER_ADDR and MASTER_PORT (needed when WORLD_SIZE > 1);
//   - else SLURM_PROCID and SLURM_NTASKS, with MASTER_ADDR (default: the first host of SLURM_STEP_NODELIST or
//     SLURM_JOB_NODELIST, where srun starts task 0, else SLURM_LAUNCH_NODE_IPADDR) and MASTER_PORT (default:
//     29500 + SLURM_JOB_ID mod 1000, so that jobs sharing a node rarely pick the same port);
//   - else one process.
// The local rank comes from LOCAL_RANK, else SLURM_LOCALID, else is 0.
// Throws kUsage naming the variable, what was expected and what was found.
LaunchEnvironment read_launch_environment(const std::function<const char*(const char*)>& getenv);
LaunchEnvironment read_launch_environment();  // this process's environment

// The first host of a SLURM host list: "gpu[003-005,007],cpu1" -> "gpu003". Empty for an empty list.
std::string first_slurm_host(std::string_view nodelist);

// Whether this build can join a job of many processes on `device`'s kind (Gloo for the CPU, NCCL for CUDA).
bool distributed_backend_available(const c10::Device& device);

struct DistributedOptions {
  // Longest wait for the other processes: at the rendezvous and in every collective. A process that fails closes
  // its connections, which the others notice at once; the timeout only bounds a process that hangs.
  std::chrono::milliseconds timeout = std::chrono::minutes(30);
  // Where the tensors live: the CPU (Gloo) or CUDA (NCCL). CUDA without an index is the local rank's device (modulo
  // the devices this process sees), which becomes the process's current device.
  c10::Device device = c10::kCPU;
};

enum class ReduceOp { kSum, kMax };

class Distributed {
 public:
  // A job of one process.
  Distributed();
  // Joins the job `env` describes (one process when its world_size is 1) and returns when every process has
  // joined. Throws kUsage when this build lacks the backend for options.device, kIo when the rendezvous fails.
  Distributed(const LaunchEnvironment& env, const DistributedOptions& options);
  ~Distributed();
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  // The shared job of one process, for callers that were not given one.
  static const Distributed& single_process();

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  bool is_root() const { return rank_ == 0; }
  bool active() const { return world_size_ > 1; }
  std::string backend_name() const;  // "gloo", "nccl", or "none" for one process
  const std::string& launcher() const { return source_; }
  std::string describe() const;  // "rank 1 of 2", for messages and logs
  // Seconds spent inside collectives so far (waiting for the others included).
  double seconds_in_collectives() const { return seconds_; }

  // This process's contiguous share [first, last) of n items: rank r gets [r·n/W, (r+1)·n/W).
  std::pair<int64_t, int64_t> share(int64_t n) const;
  std::pair<int64_t, int64_t> share_of(int rank, int64_t n) const;

  // Every collective must be called by all processes in the same order with tensors of the same shapes and dtypes;
  // `what` names the step in error messages. Tensors may live on any device; they are moved to the backend's.
  // Replaces each tensor by its element-wise reduction over the processes.
  void all_reduce(std::vector<at::Tensor>& tensors, ReduceOp op, std::string_view what) const;
  // The reduction of scalars (one collective for all of them).
  std::vector<double> all_reduce(const std::vector<double>& values, ReduceOp op, std::string_view what) const;
  // `local` holds this process's share(total) of the rows (dim 0) of a [total, ...] tensor; returns the whole
  // tensor, the same on every process, on local's device.
  at::Tensor all_gather_shares(const at::Tensor& local, int64_t total, std::string_view what) const;
  // Replaces `tensor` by rank `root`'s.
  void broadcast(at::Tensor& tensor, int root, std::string_view what) const;
  void barrier(std::string_view what) const;
  // Rank `root`'s text, on every process (e.g. a saved state that rank 0 read).
  std::string broadcast_text(const std::string& text, int root, std::string_view what) const;
  // Every process's text, by rank, on every process (e.g. the records of the files each one wrote).
  std::vector<std::string> all_gather_text(const std::string& text, std::string_view what) const;
  // Throws kUsage unless every process passed the same text (e.g. its settings): mismatched processes would
  // otherwise exchange tensors of different shapes.
  void check_same(std::string_view text, std::string_view what) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0;
  int world_size_ = 1;
  std::string source_;
  mutable double seconds_ = 0;
};

}  // namespace optima
