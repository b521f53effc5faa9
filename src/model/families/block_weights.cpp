// Lookup of a block's weights by name (BlockWeights, family.h), as the families' forward passes read them.
#include <fmt/format.h>

#include "optima/core/error.h"
#include "optima/model/family.h"

namespace optima {

const at::Tensor& BlockWeights::get(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) fail(ErrorKind::kInternal, fmt::format("block {}", index), "missing weight " + name);
  return it->second;
}

at::Tensor BlockWeights::find(const std::string& name) const {
  auto it = tensors.find(name);
  return it == tensors.end() ? at::Tensor() : it->second;
}

}  // namespace optima
