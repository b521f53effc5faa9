// safetensors reader (validating, zero-copy over mmap) and writer.
#include "optima/io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "optima/core/error.h"
#include "optima/io/output_dir.h"

namespace optima {
using nlohmann::json;

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

uint64_t read_le_u64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint64_t>(p[i]);
  return v;
}

std::string tensor_where(std::string_view file, std::string_view tensor) {
  return fmt::format("{}: tensor '{}'", file, tensor);
}

uint64_t require_count(const json& value, std::string_view where, std::string_view what) {
  if (!value.is_number_integer() ||
      (value.is_number_integer() && !value.is_number_unsigned() && value.get<int64_t>() < 0))
    fail_input(where, fmt::format("{} must be a non-negative integer", what), "an integer >= 0", value.dump());
  return value.get<uint64_t>();
}

TensorInfo parse_entry(const std::string& name, const json& entry, std::string_view file) {
  const std::string where = tensor_where(file, name);
  if (!entry.is_object()) fail_input(where, "entry is not an object", "an object", std::string(entry.type_name()));
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(key)) fail_input(where, fmt::format("key '{}' is missing", key));
  TensorInfo info;
  info.name = name;

  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) fail_input(where, "dtype is not a string", "a string", dtype.dump());
  const auto parsed = parse_dtype(dtype.get<std::string>());
  if (!parsed)
    fail_input(where, "unknown dtype", "one of F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64..I8, U64..U8, BOOL",
               dtype.dump());
  info.dtype = *parsed;

  const json& shape = entry["shape"];
  if (!shape.is_array()) fail_input(where, "shape is not an array", "an array of integers", shape.dump());
  // The product of the non-zero dimensions must fit in int64, not only the element count: readers build contiguous
  // strides from it, and [0, 2^62, 2^62] has no elements but strides of 2^124.
  constexpr uint64_t kMaxExtent = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  uint64_t numel = 1, extent = 1;
  bool overflow = false;
  for (const json& dim : shape) {
    const uint64_t d = require_count(dim, where, "every dimension of shape");
    if (d != 0 && extent > kMaxExtent / d) overflow = true;
    if (!overflow && d != 0) extent *= d;
    numel = d == 0 ? 0 : numel * d;  // at most extent, so it cannot wrap unless overflow is set
    info.shape.push_back(static_cast<int64_t>(d));
  }
  const uint64_t elem = static_cast<uint64_t>(dtype_size(info.dtype));
  if (overflow || numel > std::numeric_limits<uint64_t>::max() / elem)
    fail_input(where, "shape is too large", "non-zero sizes whose product fits in int64, and bytes in 64 bits",
               shape.dump());

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2)
    fail_input(where, "data_offsets must be [begin, end]", "an array of two integers", offsets.dump());
  info.begin = require_count(offsets[0], where, "data_offsets[0]");
  info.end = require_count(offsets[1], where, "data_offsets[1]");
  if (info.end < info.begin)
    fail_input(where, "data_offsets end before begin", fmt::format("end >= {}", info.begin), std::to_string(info.end));
  if (info.end - info.begin != numel * elem)
    fail_input(where, "byte range does not match dtype and shape",
               fmt::format("{} bytes ({} elements of {})", numel * elem, numel, dtype_name(info.dtype)),
               fmt::format("{} bytes [{}, {})", info.end - info.begin, info.begin, info.end));
  return info;
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const std::byte* bytes, size_t size, std::string_view where) {
  if (size < 8)
    fail_input(where, "file too small to be safetensors", "at least 8 bytes", fmt::format("{} bytes", size));
  const uint64_t header_len = read_le_u64(bytes);
  if (header_len > kMaxSafetensorsHeader)
    fail_input(where, "header length is implausibly large", fmt::format("at most {} bytes", kMaxSafetensorsHeader),
               fmt::format("{} bytes", header_len));
  if (header_len > size - 8)
    fail_input(where, "header length runs past the end of the file", fmt::format("at most {} bytes", size - 8),
               fmt::format("{} bytes", header_len));
  if (header_len < 2)
    fail_input(where, "header is too short to be a JSON object", ">= 2 bytes", fmt::format("{} bytes", header_len));

  const auto* text = reinterpret_cast<const char*>(bytes + 8);
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && !seen.insert(parsed.get<std::string>()).second &&
        duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  json header;
  try {
    header = json::parse(text, text + header_len, on_event);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e400
    fail_input(where, fmt::format("header is not valid JSON: {}", e.what()));
  }
  if (!duplicate.empty()) fail_input(tensor_where(where, duplicate), "name appears more than once in the header");
  if (!header.is_object())
    fail_input(where, "header is not a JSON object", "an object", std::string(header.type_name()));

  SafetensorsHeader result;
  result.data_offset = 8 + header_len;
  const uint64_t data_size = size - result.data_offset;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        fail_input(where, "__metadata__ is not an object", "an object of strings", std::string(entry.type_name()));
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          fail_input(fmt::format("{}: __metadata__ key '{}'", where, key), "value is not a string", "a string",
                     value.dump());
        result.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    result.tensors.push_back(parse_entry(name, entry, where));
  }

  // Every byte of the data region belongs to exactly one tensor: no overlap (two tensors aliasing), no gap, and
  // nothing past the end (a truncated download).
  std::sort(result.tensors.begin(), result.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& t : result.tensors) {
    if (t.end > data_size)
      fail_input(tensor_where(where, t.name), "byte range lies outside the data (truncated file?)",
                 fmt::format("end <= {} (data size)", data_size), fmt::format("[{}, {})", t.begin, t.end));
    if (t.begin < cursor)
      fail_input(tensor_where(where, t.name),
                 fmt::format("byte range overlaps tensor '{}'", previous ? previous->name : std::string("?")),
                 fmt::format("begin >= {}", cursor), fmt::format("[{}, {})", t.begin, t.end));
    if (t.begin > cursor)
      fail_input(tensor_where(where, t.name), "gap in the data region before this tensor",
                 fmt::format("begin == {}", cursor), fmt::format("begin == {}", t.begin));
    cursor = t.end;
    previous = &t;
  }
  if (cursor != data_size)
    fail_input(where, "data region has bytes no tensor refers to", fmt::format("{} bytes of data", cursor),
               fmt::format("{} bytes", data_size));
  return result;
}

SafetensorsFile::SafetensorsFile(std::shared_ptr<MappedFile> file, SafetensorsHeader header)
    : file_(std::move(file)), header_(std::move(header)) {
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  auto file = MappedFile::open(path);
  auto header = parse_safetensors_header(file->data(), file->size(), path.string());
  return std::shared_ptr<SafetensorsFile>(new SafetensorsFile(std::move(file), std::move(header)));
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

std::string make_safetensors_header(const std::vector<TensorBytes>& tensors,
                                    const std::map<std::string, std::string>& metadata) {
  // nlohmann's ordered_json keeps insertion order, so the header lists tensors in data order, as the reference does.
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorBytes& t : tensors) {
    if (header.contains(t.name)) fail(ErrorKind::kInternal, t.name, "tensor written twice");
    header[t.name] = {
        {"dtype", std::string(dtype_name(t.dtype))}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

void sort_for_safetensors(std::vector<TensorBytes>& tensors) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorBytes& a, const TensorBytes& b) {
    const int sa = dtype_size(a.dtype), sb = dtype_size(b.dtype);
    return sa != sb ? sa > sb : a.name < b.name;
  });
}

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorBytes>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string header = make_safetensors_header(tensors, metadata);
  OutputFile out(path);
  unsigned char length[8];
  uint64_t n = header.size();
  for (unsigned char& byte : length) {
    byte = static_cast<unsigned char>(n & 0xff);
    n >>= 8;
  }
  out.write(length, sizeof(length));
  out.write(header);
  for (const TensorBytes& t : tensors) out.write(t.data, t.nbytes);
  out.commit();
}

}  // namespace optima
