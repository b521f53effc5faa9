// libFuzzer target: config.json parsing (ModelConfig::parse) and building the architecture shape from it
// (read_model_shape, which hands the config to the family registered for its model_type, then that family's layer
// list and tensor layout), which is where keys of the wrong type or size bite.
//
// A rejected config must be an optima::Error; anything else is a finding. An accepted shape must be one the rest of
// optima can compute with: a family, positive sizes, linear layers on known input sites, tensors named under the
// block's prefix, and tensor element counts that fit in int64.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "optima/core/error.h"
#include "optima/io/model_config.h"
#include "optima/model/arch.h"
#include "optima/model/input_site.h"

namespace {

[[noreturn]] void broken(const char* what, const std::string& name) {
  std::fprintf(stderr, "accepted config breaks an invariant: %s (%s)\n", what, name.c_str());
  std::abort();
}

void check_tensors(const std::vector<optima::ExpectedTensor>& tensors) {
  for (const optima::ExpectedTensor& t : tensors) {
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d <= 0) broken("non-positive dimension", t.name);
      if (numel > std::numeric_limits<int64_t>::max() / d) broken("element count overflows int64", t.name);
      numel *= d;
    }
  }
}

void check_block(const optima::ModelShape& s, int64_t block) {
  const std::vector<optima::ExpectedTensor> tensors = optima::block_tensors(s, block);
  const std::string prefix = optima::block_prefix(s, block);
  for (const optima::ExpectedTensor& t : tensors)
    if (t.name.rfind(prefix, 0) != 0) broken("block tensor outside the block's prefix", t.name);
  check_tensors(tensors);
}

void check(const optima::ModelShape& s) {
  if (s.family == nullptr) broken("no family", s.model_type);
  for (int64_t v : {s.hidden_size, s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim, s.intermediate_size,
                    s.vocab_size, s.max_positions})
    if (v <= 0) broken("non-positive size", s.model_type);
  for (const optima::LinearLayer& l : optima::linear_layers(s)) {
    if (l.in_features <= 0 || l.out_features <= 0) broken("empty linear layer", l.name);
    if (optima::parse_input_site(optima::to_string(l.input)) != l.input) broken("unknown input site", l.name);
  }
  check_tensors(optima::global_tensors(s));
  // One block stands for all: they differ only in their prefix (expected_tensors would loop num_layers times).
  check_block(s, 0);
  check_block(s, s.num_layers - 1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto config =
        optima::ModelConfig::parse(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/config.json");
    check(optima::read_model_shape(config));
  } catch (const optima::Error&) {
    // a clear rejection of a malformed config: the expected outcome for most inputs
  }
  return 0;
}
