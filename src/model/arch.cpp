// read_model_shape and the layout functions of arch.h, which hand each question to the shape's family
// (model/family.h); validate_checkpoint, which needs a loaded Checkpoint, is in arch_checkpoint.cpp.
#include "optima/model/arch.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "families/arch_helpers.h"
#include "optima/core/error.h"
#include "optima/model/family.h"

namespace optima {
namespace {

const Family& family_of(const ModelShape& shape) {
  OPTIMA_ASSERT(shape.family != nullptr);
  return *shape.family;
}

}  // namespace

ModelShape read_model_shape(const ModelConfig& config) {
  ModelShape shape;
  shape.model_type = config.require<std::string>("model_type");
  shape.family = find_family(shape.model_type);
  if (shape.family == nullptr)
    fail_input(where_key(config, "model_type"), "unsupported model type",
               fmt::format("one of {}", fmt::join(supported_model_types(), ", ")), shape.model_type);
  shape.family->read_shape(config, shape);
  return shape;
}

std::vector<LinearLayer> linear_layers(const ModelShape& shape) {
  return family_of(shape).linear_layers(shape);
}

std::string block_prefix(const ModelShape& shape, int64_t block) {
  return family_of(shape).block_prefix(shape, block);
}

std::vector<ExpectedTensor> block_tensors(const ModelShape& shape, int64_t block) {
  return family_of(shape).block_tensors(shape, block);
}

std::vector<ExpectedTensor> global_tensors(const ModelShape& shape) {
  return family_of(shape).global_tensors(shape);
}

std::vector<ExpectedTensor> expected_tensors(const ModelShape& shape) {
  std::vector<ExpectedTensor> out = global_tensors(shape);
  for (int64_t b = 0; b < shape.num_layers; ++b) {
    auto block = block_tensors(shape, b);
    out.insert(out.end(), block.begin(), block.end());
  }
  return out;
}

}  // namespace optima
