// DType <-> ScalarType mapping and zero-copy tensors over mapped checkpoint bytes.
#include "optima/io/tensor.h"

#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <cstring>

#include "optima/core/error.h"

namespace optima {

at::ScalarType to_scalar_type(DType dtype) {
  switch (dtype) {
    case DType::kF64: return at::kDouble;
    case DType::kF32: return at::kFloat;
    case DType::kF16: return at::kHalf;
    case DType::kBF16: return at::kBFloat16;
    case DType::kF8E4M3: return at::kFloat8_e4m3fn;
    case DType::kF8E5M2: return at::kFloat8_e5m2;
    case DType::kI64: return at::kLong;
    case DType::kI32: return at::kInt;
    case DType::kI16: return at::kShort;
    case DType::kI8: return at::kChar;
    case DType::kU64: return at::kUInt64;
    case DType::kU32: return at::kUInt32;
    case DType::kU16: return at::kUInt16;
    case DType::kU8: return at::kByte;
    case DType::kBool: return at::kBool;
  }
  OPTIMA_ASSERT(false);
}

DType to_dtype(at::ScalarType type, std::string_view where) {
  for (DType d : kAllDTypes)
    if (to_scalar_type(d) == type) return d;
  fail_input(where, "tensor type cannot be stored in safetensors", "a real or integer type",
             std::string(c10::toString(type)));
}

at::ScalarType parse_float_dtype(std::string_view name) {
  if (name == "float32" || name == "fp32" || name == "f32") return at::kFloat;
  if (name == "float16" || name == "fp16" || name == "half" || name == "f16") return at::kHalf;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float64" || name == "fp64" || name == "f64") return at::kDouble;
  fail_usage(fmt::format("unknown dtype '{}' (expected float32, float16, bfloat16 or float64)", name));
}

c10::Device parse_device(std::string_view name) {
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(std::string(name));
  } catch (const c10::Error&) {
    fail_usage(fmt::format("unknown device '{}' (expected cpu, cuda or cuda:N)", name));
  }
  if (device.is_cuda() && !at::hasCUDA())
    fail_usage(
        fmt::format("device '{}' requested, but CUDA is not available here (no GPU, or a build without CUDA)", name));
  if (!device.is_cpu() && !device.is_cuda())
    fail_usage(fmt::format("unsupported device '{}' (expected cpu or cuda)", name));
  return device;
}

std::string hf_dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kDouble: return "float64";
    default: fail_usage(fmt::format("{} is not a model weight type", c10::toString(type)));
  }
}

at::Tensor tensor_from_bytes(const TensorInfo& info, const std::byte* data, std::shared_ptr<const void> owner) {
  const auto options = at::TensorOptions().dtype(to_scalar_type(info.dtype)).device(at::kCPU);
  const auto alignment = static_cast<uintptr_t>(dtype_size(info.dtype));
  if (reinterpret_cast<uintptr_t>(data) % alignment != 0) {
    at::Tensor copy = at::empty(info.shape, options);
    std::memcpy(copy.data_ptr(), data, info.nbytes());
    return copy;
  }
  // from_blob takes a mutable pointer; the mapping is private copy-on-write, so writes never reach the file.
  return at::from_blob(
      const_cast<std::byte*>(data), info.shape, [keep = std::move(owner)](void*) mutable { keep.reset(); }, options);
}

TensorBytes tensor_bytes(const std::string& name, const at::Tensor& contiguous_cpu) {
  OPTIMA_ASSERT(contiguous_cpu.is_contiguous() && contiguous_cpu.device().is_cpu());
  TensorBytes bytes;
  bytes.name = name;
  bytes.dtype = to_dtype(contiguous_cpu.scalar_type(), name);
  bytes.shape = contiguous_cpu.sizes().vec();
  bytes.data = contiguous_cpu.data_ptr();
  bytes.nbytes = contiguous_cpu.nbytes();
  return bytes;
}

}  // namespace optima
