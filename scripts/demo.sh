#!/usr/bin/env bash
# Sets up, builds and runs optima's main job on an embedded default: the real stories260k LLaMA from the offline
# assets when present (SparseGPT at 50% with exact OPTIMA reconstruction, calibrated on TinyStories, then the
# perplexity of the dense and the pruned model on held-out stories); else a small random OPT model that optima
# generates itself, pruned by magnitude (which needs no calibration data or tokenizer) and inspected.
# Outputs go to out/demo/ in the repository.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$("$repo/scripts/build.sh" release | tail -n 1)
optima="$build/optima"
assets=${OPTIMA_ASSETS:-$repo/../shared/assets}
out="$repo/out/demo"
mkdir -p "$out"
model="$assets/models/stories260k"
stories="$assets/text/tinystories/tiny.utf8"

if [[ ! -f "$model/config.json" || ! -f "$stories" ]]; then
  echo "[demo] $model not found; using a random OPT model" >&2
  model="$out/opt-tiny"
  [[ -f "$model/config.json" ]] || "$optima" make-random --preset opt-tiny --out "$model" --seed 0
  set -x
  "$optima" prune --model "$model" --out "$out/opt-tiny-magnitude-50" --method magnitude --sparsity 0.5 --overwrite
  "$optima" inspect "$out/opt-tiny-magnitude-50"
  exit 0
fi

# Calibrate on the first 80% of the stories and evaluate on the rest, so that no evaluated story was seen. Few
# stories have more than 256 tokens (2 of 1610), so the default --calib-rule auto joins them into one stream
# (the concatenated rule) instead of drawing all 128 windows from those two; the log says so.
lines=$(wc -l <"$stories")
head -n $((lines * 4 / 5)) "$stories" >"$out/calib.txt"
tail -n +$((lines * 4 / 5 + 1)) "$stories" >"$out/heldout.txt"
set -x
"$optima" --version
"$optima" inspect "$model"
"$optima" prune --model "$model" --out "$out/stories260k-sparsegpt-optima-50" --method sparsegpt --sparsity 0.5 \
  --reconstruct optima --calib "$out/calib.txt" --nsamples 128 --seqlen 256 --calib-rule auto --overwrite
"$optima" eval --model "$model" --dataset "$out/heldout.txt" --seqlen 256
"$optima" eval --model "$out/stories260k-sparsegpt-optima-50" --dataset "$out/heldout.txt" --seqlen 256
