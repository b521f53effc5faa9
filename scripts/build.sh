#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and builds optima with a CMake preset: release (default), debug, asan or cpu; targets
# after the preset build only those (e.g. `scripts/build.sh asan optima_base_tests`).
# Under CI=true warnings are errors. Prints nothing on stdout but the build folder on its last line.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
preset=${1:-release}
targets=("${@:2}")
python=$("$repo/scripts/setup.sh" | tail -n 1)
export OPTIMA_PYTHON="$python"
# Clones in different folders share ccache entries.
export CCACHE_BASEDIR="$repo" CCACHE_NOHASHDIR=true
cd "$repo"
extra=()
[[ "${CI:-}" == true ]] && extra+=(-DOPTIMA_WERROR=ON)
cmake --preset "$preset" -DOPTIMA_PYTHON="$python" "${extra[@]}" >&2
cmake --build --preset "$preset" -j "${OPTIMA_JOBS:-$(nproc)}" ${targets[@]+--target "${targets[@]}"} >&2
echo "$repo/build/$preset"
