// libFuzzer target: the safetensors header parser (parse_safetensors_header) on arbitrary file bytes.
//
// A rejected file must be an optima::Error; anything else escaping (a sanitizer report, another exception type, a
// crash) is a finding. An accepted header must also keep the promises the tensor readers rely on, which are checked
// here so that a parser bug that lets a bad layout through shows up as a crash rather than as silent misreads.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "optima/core/error.h"
#include "optima/io/safetensors.h"

namespace {

[[noreturn]] void broken(const char* what, const optima::TensorInfo& t) {
  std::fprintf(stderr, "accepted header breaks an invariant: %s (tensor '%s')\n", what, t.name.c_str());
  std::abort();
}

void check(const optima::SafetensorsHeader& header, size_t size) {
  if (header.data_offset < 8 || header.data_offset > size) std::abort();
  const uint64_t data_size = size - header.data_offset;
  uint64_t cursor = 0;
  for (const optima::TensorInfo& t : header.tensors) {
    if (t.begin != cursor || t.end < t.begin || t.end > data_size) broken("tensors do not tile the data region", t);
    cursor = t.end;
    // Readers build strides (products of trailing dimensions) in int64: every such product must fit, zeros aside.
    int64_t stride = 1;
    for (size_t i = t.shape.size(); i-- > 0;) {
      const int64_t d = t.shape[i];
      if (d < 0) broken("negative dimension", t);
      if (d != 0 && stride > std::numeric_limits<int64_t>::max() / d) broken("stride overflows int64", t);
      if (d != 0) stride *= d;
    }
    const uint64_t elem = static_cast<uint64_t>(optima::dtype_size(t.dtype));
    if (static_cast<uint64_t>(t.numel()) * elem != t.nbytes()) broken("byte size differs from numel * dtype size", t);
  }
  if (cursor != data_size) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    check(optima::parse_safetensors_header(reinterpret_cast<const std::byte*>(data), size, "fuzz.safetensors"), size);
  } catch (const optima::Error&) {
    // a clear rejection of a malformed file: the expected outcome for most inputs
  }
  return 0;
}
