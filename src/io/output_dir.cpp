// Atomic output files and directories (see output_dir.h).
#include "optima/io/output_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>
#include <vector>

#include "optima/core/error.h"

namespace optima {
namespace fs = std::filesystem;

void fail_io_errno(const fs::path& path, std::string_view action) {
  throw Error(ErrorKind::kIo, describe(path.string(), fmt::format("cannot {}: {}", action, std::strerror(errno))));
}

OutputFile::OutputFile(fs::path final_path) : final_path_(std::move(final_path)) {
  partial_path_ = final_path_;
  partial_path_ += ".partial";
  fd_ = ::open(partial_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_io_errno(partial_path_, "create file");
}

OutputFile::~OutputFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) {
    std::error_code ignored;
    fs::remove(partial_path_, ignored);
  }
}

void OutputFile::write(const void* data, size_t size) {
  const auto* bytes = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, bytes, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_io_errno(partial_path_, "write");
    }
    bytes += n;
    size -= static_cast<size_t>(n);
    written_ += static_cast<uint64_t>(n);
  }
}

void OutputFile::copy_from(int source_fd, uint64_t offset, uint64_t size, const fs::path& source_name) {
  std::vector<char> buffer(std::min<uint64_t>(size, 8u << 20));
  while (size > 0) {
    const size_t chunk = std::min<uint64_t>(size, buffer.size());
    const ssize_t n = ::pread(source_fd, buffer.data(), chunk, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail_io_errno(source_name, "read staged data");
    write(buffer.data(), static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
    size -= static_cast<uint64_t>(n);
  }
}

void OutputFile::commit() {
  if (::fsync(fd_) != 0) fail_io_errno(partial_path_, "flush");
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail_io_errno(partial_path_, "close");
  }
  fd_ = -1;
  if (::rename(partial_path_.c_str(), final_path_.c_str()) != 0) fail_io_errno(final_path_, "rename into place");
  committed_ = true;
}

void write_text_file(const fs::path& path, std::string_view text) {
  OutputFile file(path);
  file.write(text);
  file.commit();
}

namespace {
bool is_same_or_inside(const fs::path& candidate, const fs::path& base) {
  std::error_code ec;
  const fs::path a = fs::weakly_canonical(candidate, ec);
  const fs::path b = fs::weakly_canonical(base, ec);
  if (b.empty()) return false;
  auto mismatch = std::mismatch(b.begin(), b.end(), a.begin(), a.end());
  return mismatch.first == b.end();
}
}  // namespace

StagedDirectory::StagedDirectory(fs::path final_dir, bool overwrite, const fs::path& protected_dir)
    : final_dir_(std::move(final_dir)), overwrite_(overwrite) {
  if (final_dir_.empty()) fail_usage("no output directory given");
  if (!protected_dir.empty() && is_same_or_inside(final_dir_, protected_dir))
    fail_usage(fmt::format("output directory {} is the input model directory {} or inside it; choose another",
                           final_dir_.string(), protected_dir.string()));
  std::error_code ec;
  if (fs::exists(final_dir_, ec) && !overwrite_)
    fail_usage(fmt::format("output directory {} already exists; pass --overwrite to replace it", final_dir_.string()));
  const fs::path parent = final_dir_.parent_path().empty() ? fs::path(".") : final_dir_.parent_path();
  if (!fs::exists(parent, ec)) {
    fs::create_directories(parent, ec);
    if (ec) throw Error(ErrorKind::kIo, describe(parent.string(), "cannot create directory: " + ec.message()));
  }
  staging_ = parent / fmt::format(".{}.partial-{}", final_dir_.filename().string(), ::getpid());
  fs::remove_all(staging_, ec);
  if (!fs::create_directory(staging_, ec) || ec)
    throw Error(ErrorKind::kIo, describe(staging_.string(), "cannot create staging directory: " + ec.message()));
}

StagedDirectory::~StagedDirectory() {
  if (!committed_) {
    std::error_code ignored;
    fs::remove_all(staging_, ignored);
  }
}

void StagedDirectory::commit() {
  std::error_code ec;
  fs::path displaced;
  if (fs::exists(final_dir_, ec)) {
    if (!overwrite_) fail_usage(fmt::format("output directory {} appeared while writing", final_dir_.string()));
    // Move the old output aside first so that a failure in between never leaves neither version.
    displaced = staging_;
    displaced += ".old";
    fs::remove_all(displaced, ec);
    fs::rename(final_dir_, displaced, ec);
    if (ec) throw Error(ErrorKind::kIo, describe(final_dir_.string(), "cannot replace directory: " + ec.message()));
  }
  fs::rename(staging_, final_dir_, ec);
  if (ec) throw Error(ErrorKind::kIo, describe(final_dir_.string(), "cannot rename into place: " + ec.message()));
  committed_ = true;
  if (!displaced.empty()) fs::remove_all(displaced, ec);
}

}  // namespace optima
