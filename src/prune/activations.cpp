// Calibration activations in memory or mapped from disk (see activations.h).
#include "optima/prune/activations.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>

#include "optima/core/byte_size.h"
#include "optima/core/error.h"
#include "optima/io/output_dir.h"

namespace optima {
namespace fs = std::filesystem;

namespace {

uint64_t page_size() {
  static const auto size = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

// A number from the first line of a file, or UINT64_MAX when it is absent or unreadable.
uint64_t read_number(const fs::path& path) {
  std::ifstream in(path);
  uint64_t value = 0;
  if (!(in >> value)) return UINT64_MAX;
  return value;
}

uint64_t mem_available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return UINT64_MAX;
}

// What the process's memory cgroup still allows, v2 or v1; UINT64_MAX when unlimited or unknown.
uint64_t cgroup_headroom_bytes() {
  std::ifstream self("/proc/self/cgroup");
  std::string line;
  uint64_t headroom = UINT64_MAX;
  while (std::getline(self, line)) {
    // "0::/path" (v2) or "4:memory:/path" (v1)
    const auto first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1), path = line.substr(second + 1);
    fs::path limit_file, usage_file;
    if (controllers.empty()) {
      limit_file = fs::path("/sys/fs/cgroup") / path.substr(1) / "memory.max";
      usage_file = fs::path("/sys/fs/cgroup") / path.substr(1) / "memory.current";
    } else if (controllers == "memory") {
      limit_file = fs::path("/sys/fs/cgroup/memory") / path.substr(1) / "memory.limit_in_bytes";
      usage_file = fs::path("/sys/fs/cgroup/memory") / path.substr(1) / "memory.usage_in_bytes";
    } else {
      continue;
    }
    const uint64_t limit = read_number(limit_file), usage = read_number(usage_file);
    if (limit == UINT64_MAX || limit >= (uint64_t{1} << 60)) continue;  // "max" or v1's "unlimited"
    headroom = std::min(headroom, usage == UINT64_MAX || usage > limit ? 0 : limit - usage);
  }
  return headroom;
}

}  // namespace

uint64_t activation_budget_bytes(const std::string& setting) {
  if (setting == "none") return UINT64_MAX;
  if (setting == "auto") {
    const uint64_t available = std::min(mem_available_bytes(), cgroup_headroom_bytes());
    return available == UINT64_MAX ? UINT64_MAX : available / 2;
  }
  return parse_byte_size(setting);
}

ActivationStore::ActivationStore(std::vector<std::vector<int64_t>> shapes, at::ScalarType dtype, uint64_t budget_bytes,
                                 fs::path spill_file)
    : shapes_(std::move(shapes)), dtype_(dtype), spill_file_(std::move(spill_file)) {
  const uint64_t element = at::elementSize(dtype_);
  for (const auto& shape : shapes_) {
    uint64_t n = element;
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    offsets_.push_back(total_bytes_);
    total_bytes_ += (n + page_size() - 1) / page_size() * page_size();  // page-aligned batches release cleanly
  }
  if (total_bytes_ <= budget_bytes || total_bytes_ == 0) {
    in_memory_.resize(shapes_.size());
    return;
  }
  // The folder may not exist yet on a process of a job of many that does not share rank 0's.
  std::error_code ec;
  fs::create_directories(spill_file_.parent_path(), ec);
  const int fd = ::open(spill_file_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) fail_io_errno(spill_file_, "create the activation file");
  // Reserve the blocks now, so a full disk fails here and not with SIGBUS when a page is first written.
  const int reserved = ::posix_fallocate(fd, 0, static_cast<off_t>(total_bytes_));
  if (reserved != 0) {
    ::close(fd);
    std::error_code ignored;
    fs::remove(spill_file_, ignored);
    errno = reserved;
    fail_io_errno(spill_file_, fmt::format("reserve {:.1f} MiB for the calibration activations",
                                           static_cast<double>(total_bytes_) / 1048576.0));
  }
  void* mapped = ::mmap(nullptr, total_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  ::close(fd);
  if (mapped == MAP_FAILED) {
    std::error_code ignored;
    fs::remove(spill_file_, ignored);
    errno = err;
    fail_io_errno(spill_file_, "map the activation file");
  }
  mapping_ = static_cast<std::byte*>(mapped);
  spdlog::info("calibration activations ({:.1f} MiB) exceed the memory budget ({:.1f} MiB): kept in {}",
               static_cast<double>(total_bytes_) / 1048576.0, static_cast<double>(budget_bytes) / 1048576.0,
               spill_file_.string());
}

ActivationStore::~ActivationStore() {
  if (mapping_ != nullptr) {
    ::munmap(mapping_, total_bytes_);
    std::error_code ignored;
    fs::remove(spill_file_, ignored);
  }
}

at::Tensor ActivationStore::get(size_t i) const {
  if (mapping_ == nullptr) return in_memory_.at(i);
  return at::from_blob(mapping_ + offsets_.at(i), shapes_.at(i), at::TensorOptions().dtype(dtype_));
}

void ActivationStore::set(size_t i, const at::Tensor& value) {
  OPTIMA_ASSERT(value.sizes().vec() == shapes_.at(i) && value.scalar_type() == dtype_);
  if (mapping_ == nullptr) {
    in_memory_.at(i) = value.to(at::kCPU).contiguous();
    return;
  }
  get(i).copy_(value);
}

void ActivationStore::release(size_t i) const {
  if (mapping_ == nullptr) return;
  const uint64_t begin = offsets_.at(i), end = i + 1 < offsets_.size() ? offsets_[i + 1] : total_bytes_;
  // Dirty pages of a shared mapping stay in the page cache and are written back; only this process's use ends.
  (void)::madvise(mapping_ + begin, end - begin, MADV_DONTNEED);
}

}  // namespace optima
