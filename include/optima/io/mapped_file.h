// A read-only view of a whole file through mmap, shared by the tensors that point into it.
//
// The mapping is private copy-on-write: tensors made from it may be written to by mistake without ever touching
// the file on disk, which is how optima guarantees that it never modifies an input model.
#pragma once

#include <cstddef>
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

 private:
  MappedFile(std::filesystem::path path, std::byte* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::filesystem::path path_;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace optima
