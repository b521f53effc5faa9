// Element types of checkpoint tensors, as named by the safetensors format ("F32", "BF16", ...).
//
// Kept free of LibTorch so the file parsers can be built and fuzzed on their own; src/io/tensor.cpp maps these to
// at::ScalarType.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace optima {

enum class DType : uint8_t {
  kF64,
  kF32,
  kF16,
  kBF16,
  kF8E4M3,
  kF8E5M2,
  kI64,
  kI32,
  kI16,
  kI8,
  kU64,
  kU32,
  kU16,
  kU8,
  kBool
};

inline constexpr DType kAllDTypes[] = {DType::kF64,    DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3,
                                       DType::kF8E5M2, DType::kI64, DType::kI32, DType::kI16,  DType::kI8,
                                       DType::kU64,    DType::kU32, DType::kU16, DType::kU8,   DType::kBool};

// The safetensors name: "F32", "BF16", "F8_E4M3", "BOOL", ...
std::string_view dtype_name(DType dtype);
// Parses a safetensors dtype name; nullopt when unknown.
std::optional<DType> parse_dtype(std::string_view name);
// Bytes per element.
int dtype_size(DType dtype);
bool is_floating(DType dtype);

}  // namespace optima
