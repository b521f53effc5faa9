// A read-only view of a whole file through mmap, shared by the tensors that point into it.
//
// The mapping is private copy-on-write: tensors made from it may be written to by mistake without ever touching
// the file on disk, which is how optima guarantees that it never modifies an input model.
//
// A run reads its mapped inputs for hours, and another program may truncate or rewrite one meanwhile (a restarted
// download, a sync tool). Two defences, because zero-copy tensors read the pages lazily:
//   - check_unchanged() compares the file's size and modification time with those seen when it was opened;
//     Checkpoint::load calls it before handing out each tensor, so a change is an input error naming the file.
//   - a change between that check and the read makes the kernel raise SIGBUS on the missing pages, which no program
//     can recover from; a handler installed with the first mapping prints which file shrank and exits with the
//     input-error code instead of a bare "Bus error". Outputs are only renamed into place when complete, so none
//     appears under its final name (the hidden staging directory of that run may remain).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <ctime>
#include <filesystem>
#include <memory>

namespace optima {

class MappedFile {
 public:
  // Maps `path`; throws an input error naming the file when it is missing, not a regular file, or unreadable.
  static std::shared_ptr<MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }
  // Lets the kernel drop the pages read so far (they are read again from the file when touched), so that a
  // model streamed block by block does not stay resident. Never loses data: nothing writes to the mapping.
  void drop_resident_pages() const;
  // Throws an input error naming the file when its size or modification time differ from when it was opened.
  void check_unchanged() const;

 private:
  MappedFile(std::filesystem::path path, int fd, std::byte* data, size_t size, timespec mtime);
  std::filesystem::path path_;
  int fd_ = -1;  // kept open so that check_unchanged() sees this file even if the name is replaced
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  timespec mtime_{};
  int slot_ = -1;  // in the SIGBUS handler's table, or -1
};

}  // namespace optima
