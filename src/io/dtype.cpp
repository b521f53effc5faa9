// Names and sizes of the safetensors element types.
#include "optima/io/dtype.h"

namespace optima {
namespace {
struct DTypeEntry {
  DType dtype;
  std::string_view name;
  int size;
  bool floating;
};
constexpr DTypeEntry kTable[] = {
    {DType::kF64, "F64", 8, true},   {DType::kF32, "F32", 4, true},        {DType::kF16, "F16", 2, true},
    {DType::kBF16, "BF16", 2, true}, {DType::kF8E4M3, "F8_E4M3", 1, true}, {DType::kF8E5M2, "F8_E5M2", 1, true},
    {DType::kI64, "I64", 8, false},  {DType::kI32, "I32", 4, false},       {DType::kI16, "I16", 2, false},
    {DType::kI8, "I8", 1, false},    {DType::kU64, "U64", 8, false},       {DType::kU32, "U32", 4, false},
    {DType::kU16, "U16", 2, false},  {DType::kU8, "U8", 1, false},         {DType::kBool, "BOOL", 1, false},
};
const DTypeEntry& entry(DType dtype) {
  return kTable[static_cast<int>(dtype)];
}
}  // namespace

std::string_view dtype_name(DType dtype) {
  return entry(dtype).name;
}
int dtype_size(DType dtype) {
  return entry(dtype).size;
}
bool is_floating(DType dtype) {
  return entry(dtype).floating;
}

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& e : kTable)
    if (e.name == name) return e.dtype;
  return std::nullopt;
}

}  // namespace optima
