// The safetensors format: a validating zero-copy reader and a writer, without LibTorch.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON header, then the data region. The header maps each
// tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data region) and may
// hold "__metadata__" (string to string). Everything a hostile file can get wrong is checked before any tensor is
// used, and every error names the file and the tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "optima/io/dtype.h"
#include "optima/io/mapped_file.h"

namespace optima {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data region
  uint64_t end = 0;

  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in data order
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // where the data region starts in the file (8 + header length)
};

// Largest header accepted (the reference implementation's limit): guards against absurd allocations.
inline constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

// Parses and validates the header of a safetensors file held in `bytes` (the whole file); `where` names it in errors.
SafetensorsHeader parse_safetensors_header(const std::byte* bytes, size_t size, std::string_view where);

class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return file_->path(); }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  // nullptr when absent.
  const TensorInfo* find(std::string_view name) const;
  // Start of a tensor's bytes inside the mapping.
  const std::byte* data(const TensorInfo& info) const { return file_->data() + header_.data_offset + info.begin; }
  const std::shared_ptr<MappedFile>& mapping() const { return file_; }

 private:
  SafetensorsFile(std::shared_ptr<MappedFile> file, SafetensorsHeader header);
  std::shared_ptr<MappedFile> file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;
};

// One tensor to write: raw little-endian bytes, row-major contiguous.
struct TensorBytes {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  uint64_t nbytes = 0;
};

// The header, padded with spaces to a multiple of 8 bytes, for tensors laid out in the given order.
// Returns the serialized header (without the 8-byte length prefix).
std::string make_safetensors_header(const std::vector<TensorBytes>& tensors,
                                    const std::map<std::string, std::string>& metadata);

// Orders tensors as the reference writer does (wider elements first, then by name), which keeps every tensor
// aligned to its element size.
void sort_for_safetensors(std::vector<TensorBytes>& tensors);

// Writes a complete file at `path` (under a temporary name, renamed when complete). Tensors are written in the
// order given; call sort_for_safetensors first for the reference layout. Throws an I/O error naming the file.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorBytes>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace optima
