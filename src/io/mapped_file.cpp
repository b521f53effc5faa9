// mmap-backed read-only files with errors that name the file.
#include "optima/io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "optima/core/error.h"

namespace optima {

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
    void* mapped = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (mapped == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      fail_input(path.string(), fmt::format("cannot map file of {} bytes: {}", size, std::strerror(err)));
    }
    data = static_cast<std::byte*>(mapped);
  }
  ::close(fd);  // the mapping keeps the file open
  return std::shared_ptr<MappedFile>(new MappedFile(path, data, size));
}

void MappedFile::drop_resident_pages() const {
  // Advice only: a failure (an unusual file system) costs memory, not correctness.
  if (data_ != nullptr) (void)::madvise(data_, size_, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

}  // namespace optima
