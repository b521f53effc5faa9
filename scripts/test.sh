#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite: the C++ unit and CLI tests (ctest), then the Python
# interoperability checks (transformers and safetensors read what optima writes). This is what CI runs.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$("$repo/scripts/build.sh" release | tail -n 1)
export OPTIMA_ASSETS=${OPTIMA_ASSETS:-$repo/../shared/assets}
cd "$build"
ctest --output-on-failure --timeout 900 -j 2
