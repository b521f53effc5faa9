// Checks a loaded checkpoint against the tensors its architecture expects (validate_checkpoint, declared in arch.h).
// Apart from arch.cpp because Checkpoint is LibTorch-based and arch.cpp is not.
#include <fmt/ranges.h>

#include "optima/core/error.h"
#include "optima/io/checkpoint.h"
#include "optima/model/arch.h"

namespace optima {

void validate_checkpoint(const Checkpoint& checkpoint, const ModelShape& shape) {
  for (const ExpectedTensor& e : expected_tensors(shape)) {
    const CheckpointTensor* t = checkpoint.find(e.name);
    if (t == nullptr)
      fail_input(checkpoint.dir().string(), fmt::format("tensor '{}' is missing", e.name),
                 fmt::format("shape [{}] as config.json implies", fmt::join(e.shape, ", ")), "no such tensor");
    if (t->shape != e.shape)
      fail_input(fmt::format("{}: tensor '{}'", checkpoint.weight_files()[t->file_index].string(), e.name),
                 "shape does not match config.json", fmt::format("[{}]", fmt::join(e.shape, ", ")),
                 fmt::format("[{}]", fmt::join(t->shape, ", ")));
    // The forward pass and the selectors compute in these four; FP8 checkpoints need a cast first (optima convert).
    const bool computable =
        t->dtype == DType::kF32 || t->dtype == DType::kF16 || t->dtype == DType::kBF16 || t->dtype == DType::kF64;
    if (!computable)
      fail_input(fmt::format("{}: tensor '{}'", checkpoint.weight_files()[t->file_index].string(), e.name),
                 is_floating(t->dtype)
                     ? "dtype is not supported for pruning or evaluation (cast it first: optima convert --dtype "
                       "float16)"
                     : "weights must be floating point",
                 "F32, F16, BF16 or F64", std::string(dtype_name(t->dtype)));
  }
}

}  // namespace optima
