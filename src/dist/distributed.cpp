// Launcher variables, the rendezvous and the collectives of a job of many processes (see distributed.h). The
// backends are used through c10d::Backend only; backends.h says why they are made elsewhere.
#include "optima/dist/distributed.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <charconv>
#include <cstdlib>
#include <cstring>

#include "backends.h"
#include "optima/core/error.h"
#include "optima/core/resources.h"

namespace optima {

namespace {

constexpr int kDefaultPort = 29500;

std::string variable(const std::function<const char*(const char*)>& getenv, const char* name) {
  const char* value = getenv(name);
  return value ? std::string(value) : std::string();
}

int parse_int(const char* name, const std::string& text, int low, int high) {
  int value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < low || value > high)
    fail_usage(
        fmt::format("environment variable {}: expected an integer in [{}, {}], found '{}'", name, low, high, text));
  return value;
}

int parse_port(const std::string& text) {
  return parse_int("MASTER_PORT", text, 1, 65535);
}

// FNV-1a: a hash that is the same in every process and build, unlike std::hash.
uint64_t fingerprint(std::string_view text) {
  uint64_t h = 14695981039346656037ULL;
  for (const char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ULL;
  }
  return h;
}

}  // namespace

std::string first_slurm_host(std::string_view nodelist) {
  // A list is comma-separated entries, each a name or a prefix with a bracketed list of numbers and ranges.
  size_t end = 0;
  int depth = 0;
  for (; end < nodelist.size(); ++end) {
    if (nodelist[end] == '[') ++depth;
    if (nodelist[end] == ']') --depth;
    if (nodelist[end] == ',' && depth == 0) break;
  }
  const std::string_view entry = nodelist.substr(0, end);
  const size_t open = entry.find('[');
  if (open == std::string_view::npos) return std::string(entry);
  std::string_view inside = entry.substr(open + 1);
  inside = inside.substr(0, inside.find_first_of(",-]"));
  const size_t close = entry.find(']', open);
  const std::string_view suffix = close == std::string_view::npos ? std::string_view() : entry.substr(close + 1);
  return std::string(entry.substr(0, open)) + std::string(inside) + first_slurm_host(suffix);  // "r[1-2]-n[3-4]"
}

LaunchEnvironment read_launch_environment(const std::function<const char*(const char*)>& getenv) {
  LaunchEnvironment env;
  const std::string local = variable(getenv, "LOCAL_RANK"), slurm_local = variable(getenv, "SLURM_LOCALID");
  if (!local.empty())
    env.local_rank = parse_int("LOCAL_RANK", local, 0, 1 << 20);
  else if (!slurm_local.empty())
    env.local_rank = parse_int("SLURM_LOCALID", slurm_local, 0, 1 << 20);
  const std::string rank = variable(getenv, "RANK"), world = variable(getenv, "WORLD_SIZE");
  const std::string master_addr = variable(getenv, "MASTER_ADDR"), master_port = variable(getenv, "MASTER_PORT");
  if (!rank.empty() || !world.empty()) {
    if (rank.empty() || world.empty())
      fail_usage(
          fmt::format("environment: RANK and WORLD_SIZE go together (found RANK='{}', WORLD_SIZE='{}')", rank, world));
    env.source = "RANK/WORLD_SIZE";
    env.world_size = parse_int("WORLD_SIZE", world, 1, 1 << 20);
    env.rank = parse_int("RANK", rank, 0, env.world_size - 1);
    if (env.world_size > 1) {
      if (master_addr.empty() || master_port.empty())
        fail_usage(
            fmt::format("environment: WORLD_SIZE={} needs MASTER_ADDR and MASTER_PORT, the address of rank 0 "
                        "(found MASTER_ADDR='{}', MASTER_PORT='{}')",
                        env.world_size, master_addr, master_port));
      env.master_addr = master_addr;
      env.master_port = parse_port(master_port);
    }
    return env;
  }
  const std::string procid = variable(getenv, "SLURM_PROCID"), ntasks = variable(getenv, "SLURM_NTASKS");
  if (procid.empty() || ntasks.empty()) return env;
  env.source = "SLURM_PROCID/SLURM_NTASKS";
  env.world_size = parse_int("SLURM_NTASKS", ntasks, 1, 1 << 20);
  env.rank = parse_int("SLURM_PROCID", procid, 0, env.world_size - 1);
  if (env.world_size == 1) return env;
  env.master_addr = master_addr;
  if (env.master_addr.empty()) env.master_addr = first_slurm_host(variable(getenv, "SLURM_STEP_NODELIST"));
  if (env.master_addr.empty()) env.master_addr = first_slurm_host(variable(getenv, "SLURM_JOB_NODELIST"));
  if (env.master_addr.empty()) env.master_addr = variable(getenv, "SLURM_LAUNCH_NODE_IPADDR");
  if (env.master_addr.empty())
    fail_usage(
        fmt::format("environment: SLURM_NTASKS={} but no host for rank 0 (expected MASTER_ADDR, "
                    "SLURM_STEP_NODELIST, SLURM_JOB_NODELIST or SLURM_LAUNCH_NODE_IPADDR, found none)",
                    env.world_size));
  if (!master_port.empty()) {
    env.master_port = parse_port(master_port);
  } else {
    const std::string job = variable(getenv, "SLURM_JOB_ID");
    env.master_port = kDefaultPort + (job.empty() ? 0 : parse_int("SLURM_JOB_ID", job, 0, 1 << 30) % 1000);
  }
  return env;
}

LaunchEnvironment read_launch_environment() {
  return read_launch_environment([](const char* name) { return std::getenv(name); });
}

bool distributed_backend_available(const c10::Device& device) {
#if OPTIMA_HAS_NCCL
  if (device.is_cuda()) return true;
#endif
#if OPTIMA_HAS_GLOO
  if (device.is_cpu()) return true;
#endif
  (void)device;
  return false;
}

struct Distributed::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  c10::Device device = c10::kCPU;
  std::chrono::milliseconds timeout{0};
};

Distributed::Distributed() = default;
Distributed::~Distributed() = default;

const Distributed& Distributed::single_process() {
  static const Distributed one;
  return one;
}

Distributed::Distributed(const LaunchEnvironment& env, const DistributedOptions& options)
    : rank_(env.rank), world_size_(env.world_size), source_(env.source) {
  if (world_size_ <= 1) return;
  const char* wanted = options.device.is_cuda() ? "NCCL" : "Gloo";
  if (!distributed_backend_available(options.device))
    fail_usage(
        fmt::format("{} ({}): this optima was built without {}, which a job of many processes on {} needs "
                    "(rebuild with {}; see README, 'Many processes')",
                    describe(), source_, wanted, options.device.str(),
                    options.device.is_cuda() ? "CUDA and NCCL's header" : "Debian's libgloo-dev installed"));
  impl_ = std::make_unique<Impl>();
  impl_->device = options.device;
  impl_->timeout = options.timeout;
  const auto timeout_s = std::chrono::duration_cast<std::chrono::seconds>(options.timeout).count();
  // Rank 0 says where the job meets; the others only when asked (--log-level debug).
  spdlog::log(is_root() ? spdlog::level::info : spdlog::level::debug,
              "{} ({}): joining the job at {}:{} ({}, waiting at most {} s for the others)", describe(), source_,
              env.master_addr, env.master_port, wanted, static_cast<long long>(timeout_s));
  const auto start = SteadyClock::now();
  try {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(env.master_port);
    store_options.isServer = is_root();
    store_options.numWorkers = static_cast<size_t>(world_size_);
    store_options.waitWorkers = true;
    store_options.timeout = options.timeout;
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
#if OPTIMA_HAS_NCCL
    if (options.device.is_cuda())
      impl_->backend = dist_detail::make_nccl_backend(impl_->store, rank_, world_size_, options.timeout, options.device,
                                                      env.local_rank);
#endif
#if OPTIMA_HAS_GLOO
    if (options.device.is_cpu())
      impl_->backend =
          dist_detail::make_gloo_backend(impl_->store, rank_, world_size_, options.timeout, env.master_addr);
#endif
  } catch (const std::exception& e) {
    const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    throw Error(ErrorKind::kIo,
                fmt::format("{} ({}): no rendezvous with the other {} processes at {}:{} within {} s: {} (start one "
                            "process per rank with the same MASTER_ADDR and MASTER_PORT; --dist-timeout sets the wait)",
                            describe(), source_, world_size_ - 1, env.master_addr, env.master_port, timeout_s,
                            c10_error ? c10_error->what_without_backtrace() : e.what()));
  }
  OPTIMA_ASSERT(impl_->backend);
  seconds_ += seconds_since(start);
  spdlog::debug("{}: joined in {:.1f} s", describe(), seconds_since(start));
}

std::string Distributed::backend_name() const {
  return impl_ ? impl_->backend->getBackendName() : "none";
}

std::string Distributed::describe() const {
  return fmt::format("rank {} of {}", rank_, world_size_);
}

std::pair<int64_t, int64_t> Distributed::share_of(int rank, int64_t n) const {
  return {rank * n / world_size_, (rank + 1) * n / world_size_};
}

std::pair<int64_t, int64_t> Distributed::share(int64_t n) const {
  return share_of(rank_, n);
}

namespace {

// Runs one collective and waits for it; c10d's errors (a peer that closed its connection, a timeout) become kIo
// errors that say which process and which step.
void run_collective(const std::string& who, std::string_view op, std::string_view what,
                    const std::function<c10::intrusive_ptr<c10d::Work>()>& start, std::chrono::milliseconds timeout,
                    double& seconds) {
  const auto t0 = SteadyClock::now();
  try {
    start()->wait(timeout);
  } catch (const c10::Error& e) {
    throw Error(ErrorKind::kIo,
                fmt::format("{}: {} ({}) failed: {} (another process of the job stopped, or did not get "
                            "there within --dist-timeout)",
                            who, op, what, e.what_without_backtrace()));
  } catch (const std::exception& e) {  // Gloo's own errors (a closed connection) come through as they are
    throw Error(ErrorKind::kIo,
                fmt::format("{}: {} ({}) failed: {} (another process of the job stopped, or did not get "
                            "there within --dist-timeout)",
                            who, op, what, e.what()));
  }
  seconds += seconds_since(t0);
}

c10d::ReduceOp to_c10d(ReduceOp op) {
  return op == ReduceOp::kSum ? c10d::ReduceOp::SUM : c10d::ReduceOp::MAX;
}

}  // namespace

void Distributed::all_reduce(std::vector<at::Tensor>& tensors, ReduceOp op, std::string_view what) const {
  if (!active()) return;
  c10d::AllreduceOptions options;
  options.reduceOp = to_c10d(op);
  options.timeout = impl_->timeout;
  for (at::Tensor& t : tensors) {
    // One tensor per call: c10d reads a vector of several as one tensor per local device.
    std::vector<at::Tensor> one{t.to(impl_->device).contiguous()};
    run_collective(
        describe(), "all-reduce", what, [&] { return impl_->backend->allreduce(one, options); }, impl_->timeout,
        seconds_);
    if (!one[0].is_same(t)) t.copy_(one[0]);
  }
}

std::vector<double> Distributed::all_reduce(const std::vector<double>& values, ReduceOp op,
                                            std::string_view what) const {
  if (!active() || values.empty()) return values;
  std::vector<at::Tensor> t{at::tensor(values, at::kDouble)};
  all_reduce(t, op, what);
  const at::Tensor host = t[0].cpu();
  return {host.data_ptr<double>(), host.data_ptr<double>() + host.numel()};
}

at::Tensor Distributed::all_gather_shares(const at::Tensor& local, int64_t total, std::string_view what) const {
  if (!active()) return local;
  const auto [first, last] = share(total);
  OPTIMA_ASSERT(local.dim() >= 1 && local.size(0) == last - first);
  // c10d gathers tensors of one shape: every share is padded to the largest.
  int64_t most = 0;
  for (int r = 0; r < world_size_; ++r) {
    const auto [a, b] = share_of(r, total);
    most = std::max(most, b - a);
  }
  std::vector<int64_t> sizes = local.sizes().vec();
  sizes[0] = most;
  std::vector<at::Tensor> input{at::zeros(sizes, local.options().device(impl_->device))};
  input[0].slice(0, 0, local.size(0)).copy_(local);
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < world_size_; ++r) outputs[0].push_back(at::empty_like(input[0]));
  run_collective(
      describe(), "all-gather", what, [&] { return impl_->backend->allgather(outputs, input); }, impl_->timeout,
      seconds_);
  std::vector<at::Tensor> parts;
  for (int r = 0; r < world_size_; ++r) {
    const auto [a, b] = share_of(r, total);
    parts.push_back(outputs[0][static_cast<size_t>(r)].slice(0, 0, b - a));
  }
  return at::cat(parts, 0).to(local.device());
}

void Distributed::broadcast(at::Tensor& tensor, int root, std::string_view what) const {
  if (!active()) return;
  OPTIMA_ASSERT(root >= 0 && root < world_size_);
  c10d::BroadcastOptions options;
  options.rootRank = root;
  options.timeout = impl_->timeout;
  std::vector<at::Tensor> one{tensor.to(impl_->device).contiguous()};
  run_collective(
      describe(), "broadcast", what, [&] { return impl_->backend->broadcast(one, options); }, impl_->timeout, seconds_);
  if (!one[0].is_same(tensor)) tensor.copy_(one[0]);
}

void Distributed::barrier(std::string_view what) const {
  if (!active()) return;
  c10d::BarrierOptions options;
  options.timeout = impl_->timeout;
  run_collective(
      describe(), "barrier", what, [&] { return impl_->backend->barrier(options); }, impl_->timeout, seconds_);
}

namespace {

// Text as a byte tensor of `length` (>= its size), padded with zeros, and back.
at::Tensor text_tensor(const std::string& text, int64_t length) {
  at::Tensor t = at::zeros({length}, at::kByte);
  if (!text.empty()) std::memcpy(t.data_ptr<uint8_t>(), text.data(), text.size());
  return t;
}

std::string tensor_text(const at::Tensor& t, int64_t size) {
  const at::Tensor host = t.cpu().contiguous();
  return {reinterpret_cast<const char*>(host.data_ptr<uint8_t>()), static_cast<size_t>(size)};
}

}  // namespace

std::string Distributed::broadcast_text(const std::string& text, int root, std::string_view what) const {
  if (!active()) return text;
  // The size first, so that every process receives into a buffer of the right size.
  at::Tensor size = at::tensor({static_cast<int64_t>(text.size())}, at::kLong);
  broadcast(size, root, what);
  const int64_t n = size.item<int64_t>();
  at::Tensor bytes = text_tensor(rank_ == root ? text : std::string(), std::max<int64_t>(n, 1));
  broadcast(bytes, root, what);
  return tensor_text(bytes, n);
}

std::vector<std::string> Distributed::all_gather_text(const std::string& text, std::string_view what) const {
  if (!active()) return {text};
  // c10d gathers tensors of one shape: every text is padded to the longest, and the sizes travel alongside.
  std::vector<at::Tensor> sizes{at::zeros({world_size_}, at::kLong)};
  sizes[0][rank_] = static_cast<int64_t>(text.size());
  all_reduce(sizes, ReduceOp::kSum, what);
  const at::Tensor n = sizes[0].cpu();
  const int64_t longest = std::max<int64_t>(n.max().item<int64_t>(), 1);
  std::vector<at::Tensor> input{text_tensor(text, longest).to(impl_->device)};
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < world_size_; ++r) outputs[0].push_back(at::empty_like(input[0]));
  run_collective(
      describe(), "all-gather", what, [&] { return impl_->backend->allgather(outputs, input); }, impl_->timeout,
      seconds_);
  std::vector<std::string> texts;
  texts.reserve(static_cast<size_t>(world_size_));
  for (int r = 0; r < world_size_; ++r)
    texts.push_back(tensor_text(outputs[0][static_cast<size_t>(r)], n[r].item<int64_t>()));
  return texts;
}

void Distributed::check_same(std::string_view text, std::string_view what) const {
  if (!active()) return;
  // The largest and (negated) smallest halves of the fingerprint agree only when every process has the same.
  const uint64_t h = fingerprint(text);
  const double high = static_cast<double>(h >> 32), low = static_cast<double>(h & 0xffffffffULL);
  const std::vector<double> r = all_reduce({high, low, -high, -low}, ReduceOp::kMax, what);
  if (r[0] != -r[2] || r[1] != -r[3])
    fail_usage(
        fmt::format("{}: the processes of the job were started with different {} (expected the same on "
                    "every rank, found a difference)",
                    describe(), what));
}

}  // namespace optima
