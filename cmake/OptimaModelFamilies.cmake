# The model families' sources (src/model/families), listed once: the main library and the fuzz project
# (tests/fuzz, which builds fuzz_model_config against them) both include this file, so a file added to a family
# cannot be missing from one of the two builds. Paths are relative to the repository root.
set(OPTIMA_MODEL_FAMILY_SOURCES
  src/model/families/registry.cpp
  src/model/families/arch_helpers.cpp
  src/model/families/block_weights.cpp
  src/model/families/ops.cpp
  src/model/families/opt.cpp
  src/model/families/llama.cpp
  src/model/families/qwen3.cpp
  src/model/families/phi3.cpp
  src/model/families/rope.cpp
  src/model/families/small_head_attention_cpu.cpp
  src/model/families/sliding_window.cpp
  src/model/families/gemma_common.cpp
  src/model/families/gemma2.cpp
  src/model/families/gemma3.cpp
)
