// Writing outputs safely: files and directories appear under their final names only when complete.
//
// OutputFile writes to "<name>.partial" and renames on commit(); StagedDirectory builds a whole output directory
// under a hidden sibling name and renames it into place on commit(). If either is destroyed without commit() (an
// error, an interrupted run), the partial output is removed, so a failed run never leaves something that looks
// like a result.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace optima {

class OutputFile {
 public:
  explicit OutputFile(std::filesystem::path final_path);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  void write(const void* data, size_t size);
  void write(std::string_view text) { write(text.data(), text.size()); }
  // Copies `size` bytes of file descriptor `source_fd` from `offset` (used to assemble shards from staging data).
  void copy_from(int source_fd, uint64_t offset, uint64_t size, const std::filesystem::path& source_name);
  uint64_t bytes_written() const { return written_; }
  // Flushes to disk and renames to the final name.
  void commit();
  const std::filesystem::path& final_path() const { return final_path_; }

 private:
  std::filesystem::path final_path_;
  std::filesystem::path partial_path_;
  int fd_ = -1;
  uint64_t written_ = 0;
  bool committed_ = false;
};

// Writes a small text file (JSON, a report) atomically.
void write_text_file(const std::filesystem::path& path, std::string_view text);

class StagedDirectory {
 public:
  // Refuses an existing `final_dir` unless `overwrite`; refuses a `final_dir` that is `protected_dir` (the input)
  // or inside it.
  StagedDirectory(std::filesystem::path final_dir, bool overwrite, const std::filesystem::path& protected_dir = {});
  ~StagedDirectory();
  StagedDirectory(const StagedDirectory&) = delete;
  StagedDirectory& operator=(const StagedDirectory&) = delete;

  // Where files are written until commit().
  const std::filesystem::path& staging() const { return staging_; }
  const std::filesystem::path& final_dir() const { return final_dir_; }
  // Moves the staged directory to its final name (replacing an existing one when overwriting).
  void commit();

 private:
  std::filesystem::path final_dir_;
  std::filesystem::path staging_;
  bool overwrite_ = false;
  bool committed_ = false;
};

// Raises an I/O error naming `path` and the OS error in errno.
[[noreturn]] void fail_io_errno(const std::filesystem::path& path, std::string_view action);

}  // namespace optima
