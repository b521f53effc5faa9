// mmap-backed read-only files with errors that name the file, and the SIGBUS handler that names a file that shrank
// while mapped (see mapped_file.h).
#include "optima/io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>

#include "optima/core/error.h"

namespace optima {

namespace {

// The live mappings, for the SIGBUS handler. A handler may only read plain memory, so each slot is a fixed record
// whose `used` flag is set after, and cleared before, the rest is written.
struct MappingSlot {
  std::atomic<bool> used{false};
  const std::byte* begin = nullptr;
  size_t size = 0;
  char path[1024] = {};
};
constexpr int kMappingSlots = 4096;
MappingSlot g_slots[kMappingSlots];
std::mutex g_slots_mutex;  // serialises registration only; the handler never takes it

void write_stderr(const char* text) {
  size_t left = std::strlen(text);
  while (left > 0) {
    const ssize_t n = ::write(STDERR_FILENO, text, left);
    if (n <= 0) return;
    text += n;
    left -= static_cast<size_t>(n);
  }
}

extern "C" void on_sigbus(int signal_number, siginfo_t* info, void*) {
  const auto* address = static_cast<const std::byte*>(info->si_addr);
  for (const MappingSlot& slot : g_slots) {
    if (!slot.used.load(std::memory_order_acquire) || address < slot.begin || address >= slot.begin + slot.size)
      continue;
    write_stderr("optima: input error: ");
    write_stderr(slot.path);
    write_stderr(
        ": the file shrank while optima was reading it (truncated or rewritten in place by another "
        "program?); stopping. Nothing was renamed into place under an output name.\n");
    ::_exit(kExitInput);
  }
  // Not one of ours: the default action (a core dump) is the honest report of a bug.
  std::signal(signal_number, SIG_DFL);
}

void install_sigbus_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_sigaction = on_sigbus;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_SIGINFO;
    sigaction(SIGBUS, &action, nullptr);
  });
}

int register_mapping(const std::byte* begin, size_t size, const std::filesystem::path& path) {
  std::lock_guard<std::mutex> lock(g_slots_mutex);
  for (int i = 0; i < kMappingSlots; ++i) {
    MappingSlot& slot = g_slots[i];
    if (slot.used.load(std::memory_order_relaxed)) continue;
    slot.begin = begin;
    slot.size = size;
    std::strncpy(slot.path, path.c_str(), sizeof(slot.path) - 1);
    slot.path[sizeof(slot.path) - 1] = '\0';
    slot.used.store(true, std::memory_order_release);
    return i;
  }
  return -1;  // more mappings than slots: such a fault falls back to the default action
}

void unregister_mapping(int index) {
  if (index < 0) return;
  std::lock_guard<std::mutex> lock(g_slots_mutex);
  g_slots[index].used.store(false, std::memory_order_release);
}

bool same_time(const timespec& a, const timespec& b) {
  return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_input(path.string(), fmt::format("cannot open file: {}", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail_input(path.string(), fmt::format("cannot stat file: {}", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail_input(path.string(), "not a regular file");
  }
  const auto size = static_cast<size_t>(st.st_size);
  std::byte* data = nullptr;
  if (size > 0) {
    install_sigbus_handler();
    void* mapped = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (mapped == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      fail_input(path.string(), fmt::format("cannot map file of {} bytes: {}", size, std::strerror(err)));
    }
    data = static_cast<std::byte*>(mapped);
  }
  return std::shared_ptr<MappedFile>(new MappedFile(path, fd, data, size, st.st_mtim));
}

MappedFile::MappedFile(std::filesystem::path path, int fd, std::byte* data, size_t size, timespec mtime)
    : path_(std::move(path)), fd_(fd), data_(data), size_(size), mtime_(mtime) {
  if (data_ != nullptr) slot_ = register_mapping(data_, size_, path_);
}

void MappedFile::drop_resident_pages() const {
  // Advice only: a failure (an unusual file system) costs memory, not correctness.
  if (data_ != nullptr) (void)::madvise(data_, size_, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  unregister_mapping(slot_);
  if (data_ != nullptr) ::munmap(data_, size_);
  if (fd_ >= 0) ::close(fd_);
}

void MappedFile::check_unchanged() const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) fail_input(path_.string(), fmt::format("cannot stat file: {}", std::strerror(errno)));
  if (static_cast<size_t>(st.st_size) != size_)
    fail_input(path_.string(),
               "the file changed size while optima was reading it (truncated, extended or rewritten by another "
               "program?)",
               fmt::format("{} bytes, as when it was opened", size_), fmt::format("{} bytes", st.st_size));
  if (!same_time(st.st_mtim, mtime_))
    fail_input(path_.string(),
               "the file was modified while optima was reading it (rewritten by another program?); its tensors can "
               "no longer be trusted",
               "the modification time seen when it was opened", "a later one");
}

}  // namespace optima
