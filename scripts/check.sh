#!/usr/bin/env bash
# The reliability checks scripts/test.sh (and so CI) runs after ctest: the unit tests built with AddressSanitizer +
# UndefinedBehaviorSanitizer (preset asan), clang-tidy on optima's sources (scripts/tidy.py, cached per unit) and a
# short run of each fuzz target (scripts/fuzz.sh). Installs the Debian packages they need when missing.
#
# Environment: OPTIMA_FUZZ_SECONDS (default 20 per target); OPTIMA_ASAN_FILTER, the gtest filter of the sanitizer
# run (default below); OPTIMA_JOBS (default 2).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export OPTIMA_JOBS=${OPTIMA_JOBS:-2}
export OPTIMA_ASSETS=${OPTIMA_ASSETS:-$repo/../shared/assets}
log() { printf '[check] %s\n' "$*" >&2; }
t0=$(date +%s)

"$repo/scripts/apt_ensure.sh" clang-14 libclang-rt-14-dev clang-tidy-14

# --- unit tests under ASan + UBSan ------------------------------------------------------------------------------
# The suites that run optima's own parsing, tokenizing and file code. Left out are those whose time goes into
# LibTorch's kernels (solvers, SparseGPT/Wanda selection, decoder forward passes, perplexity): LibTorch is not
# instrumented, so they check little under ASan and cost most of the time.
default_filter='Safetensors*:HostileInputs*:Tokenizer*:TokenizerErrors*:Tokenizers/GoldenParity*:Checkpoint*'
default_filter+=':CheckpointErrors*:CheckpointWriter*:Calibration*:ModelConfig*:ModelShape*:Parsers*:PatternTest*'
default_filter+=':PythonRandom*:OutputDirectory*:SelectorFactoryTest*'
build=$("$repo/scripts/build.sh" asan | tail -n 1)
t1=$(date +%s)
log "sanitizer build: $((t1 - t0)) s"
# LibTorch is not instrumented: its process-lifetime allocations are suppressed (tests/sanitizers/lsan.supp).
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:strict_init_order=1:check_initialization_order=1"
export LSAN_OPTIONS="suppressions=$repo/tests/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
OMP_NUM_THREADS=2 "$build/tests/optima_tests" --gtest_filter="${OPTIMA_ASAN_FILTER:-$default_filter}" \
  --gtest_brief=1
t2=$(date +%s)
log "sanitizer unit tests: $((t2 - t1)) s"

# --- clang-tidy --------------------------------------------------------------------------------------------------
python3 "$repo/scripts/tidy.py" --build "$build" -j "$OPTIMA_JOBS"
t3=$(date +%s)
log "clang-tidy: $((t3 - t2)) s"

# --- fuzzing -----------------------------------------------------------------------------------------------------
"$repo/scripts/fuzz.sh" "${OPTIMA_FUZZ_SECONDS:-20}"
t4=$(date +%s)
log "fuzzing: $((t4 - t3)) s; all checks: $((t4 - t0)) s"
