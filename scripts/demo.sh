#!/usr/bin/env bash
# Sets up, builds and runs optima's main job on an embedded default model: the real stories260k LLaMA from the
# offline assets when present, else a small random OPT model that optima generates itself.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$("$repo/scripts/build.sh" release | tail -n 1)
optima="$build/optima"
assets=${OPTIMA_ASSETS:-$repo/../shared/assets}
model="$assets/models/stories260k"
if [[ ! -f "$model/config.json" ]]; then
  model="$repo/out/demo-opt-tiny"
  echo "[demo] $assets/models/stories260k not found; using a random OPT model at $model" >&2
  [[ -f "$model/config.json" ]] || "$optima" make-random --preset opt-tiny --out "$model" --seed 0
fi
set -x
"$optima" --version
"$optima" inspect "$model"
