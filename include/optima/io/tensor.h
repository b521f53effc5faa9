// Bridges between checkpoint bytes and LibTorch tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <string_view>

#include "optima/io/dtype.h"
#include "optima/io/safetensors.h"

namespace optima {

at::ScalarType to_scalar_type(DType dtype);
// Throws an input error naming `where` for types safetensors cannot hold (complex, quantized).
DType to_dtype(at::ScalarType type, std::string_view where);
// Parses a user-facing dtype name: float32|fp32|f32, float16|fp16|half, bfloat16|bf16, float64|fp64.
at::ScalarType parse_float_dtype(std::string_view name);
// Parses "cpu", "cuda" or "cuda:N"; a CUDA device on a build or machine without CUDA is a usage error.
c10::Device parse_device(std::string_view name);

// The name config.json uses for a floating type ("float32", "bfloat16", ...).
std::string hf_dtype_name(at::ScalarType type);

// A CPU tensor over `data` (described by `info`) that keeps `owner` alive while the tensor lives. Zero-copy when
// the bytes are aligned to the element size, else a copy.
at::Tensor tensor_from_bytes(const TensorInfo& info, const std::byte* data, std::shared_ptr<const void> owner);

// The raw bytes of a contiguous CPU tensor, for the safetensors writer (the tensor must outlive the view).
TensorBytes tensor_bytes(const std::string& name, const at::Tensor& contiguous_cpu);

}  // namespace optima
