// libFuzzer target: config.json parsing (ModelConfig::parse) and building the architecture shape from it
// (read_model_shape, then the per-family tensor layout), which is where keys of the wrong type or size bite.
//
// A rejected config must be an optima::Error; anything else is a finding. An accepted shape must be one the rest of
// optima can compute with: positive sizes, and tensor element counts that fit in int64.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string_view>

#include "optima/core/error.h"
#include "optima/io/model_config.h"
#include "optima/model/arch.h"

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

void check(const optima::ModelShape& s) {
  for (int64_t v : {s.hidden_size, s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim, s.intermediate_size,
                    s.vocab_size, s.max_positions})
    if (v <= 0) broken("non-positive size", s.model_type);
  for (const optima::LinearLayer& l : optima::linear_layers(s))
    if (l.in_features <= 0 || l.out_features <= 0) broken("empty linear layer", l.name);
  check_tensors(optima::global_tensors(s));
  // One block stands for all: they differ only in their prefix (expected_tensors would loop num_layers times).
  check_tensors(optima::block_tensors(s, 0));
  check_tensors(optima::block_tensors(s, s.num_layers - 1));
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
