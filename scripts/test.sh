#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite: the C++ unit and CLI tests and the Python interoperability checks
# (ctest: transformers and safetensors read what optima writes), then a short run of each fuzz target
# (scripts/fuzz.sh). This is what CI runs (.ci/run). OPTIMA_FULL_CHECKS=1 adds scripts/check.sh (unit tests under
# ASan + UBSan, clang-tidy); OPTIMA_FUZZ_SECONDS sets the fuzzing time per target (default 15, 0 skips it).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$("$repo/scripts/build.sh" release | tail -n 1)
export OPTIMA_ASSETS=${OPTIMA_ASSETS:-$repo/../shared/assets}
(cd "$build" && ctest --output-on-failure --timeout 900 -j 2)
if [[ ${OPTIMA_FULL_CHECKS:-0} == 1 ]]; then
  bash "$repo/scripts/check.sh"
elif [[ ${OPTIMA_FUZZ_SECONDS:-15} != 0 ]]; then
  "$repo/scripts/apt_ensure.sh" clang-14 libclang-rt-14-dev
  "$repo/scripts/fuzz.sh" "${OPTIMA_FUZZ_SECONDS:-15}"
fi
