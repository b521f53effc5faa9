#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite: the C++ unit and CLI tests and the Python interoperability checks
# (ctest: transformers and safetensors read what optima writes), then the reliability checks of scripts/check.sh:
# the LibTorch-free unit tests under ASan + UBSan, clang-tidy, a short run of each fuzz target, and the GPU check's
# steps on the CPU. This is what CI runs (.ci/run). OPTIMA_CHECKS picks the checks (default asan,tidy,fuzz,gpu; none
# skips them); OPTIMA_FUZZ_SECONDS sets the fuzzing time per target (default 15, 0 skips it).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$("$repo/scripts/build.sh" release | tail -n 1)
export OPTIMA_ASSETS=${OPTIMA_ASSETS:-$repo/../shared/assets}
(cd "$build" && ctest --output-on-failure --timeout 900 -j 2)
bash "$repo/scripts/check.sh"
