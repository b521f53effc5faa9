#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite: the C++ unit and CLI tests and the Python interoperability checks
# (ctest: transformers and safetensors read what optima writes), then the reliability checks (scripts/check.sh:
# unit tests under ASan + UBSan, clang-tidy, short fuzz runs). This is what CI runs (.ci/run).
# OPTIMA_SKIP_CHECKS=1 stops after ctest, for a quicker local run.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$("$repo/scripts/build.sh" release | tail -n 1)
export OPTIMA_ASSETS=${OPTIMA_ASSETS:-$repo/../shared/assets}
(cd "$build" && ctest --output-on-failure --timeout 900 -j 2)
[[ ${OPTIMA_SKIP_CHECKS:-0} == 1 ]] || bash "$repo/scripts/check.sh"
