#!/usr/bin/env bash
# CI regression run on the small trained OPT model of the offline assets (models/opt-small): prune it with
# SparseGPT at 50% on a small calibration set (8 windows of 128 tokens of the C4 stand-in), evaluate the perplexity on held-out TinyStories rows given as JSON Lines (empty rows kept, the
# evaluation protocol of the README), and compare the run with the committed baseline (baseline-opt-small.json
# beside this script) with `optima check`. Exit status: check's (0 ok, 1 regressed, 2 incomparable, 3 bad input).
#
# The GitHub Actions and GitLab CI examples here call this script; ctest runs it as the `regression` test.
# Environment: OPTIMA_BINARY (default: build with scripts/build.sh), OPTIMA_ASSETS (default ../shared/assets beside
# the repository), OPTIMA_CI_OUT (default out/ci), OPTIMA_CI_WRITE_BASELINE=1 to record the baseline instead of
# checking against it (after a change that is meant to move the numbers).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
assets=${OPTIMA_ASSETS:-$repo/../shared/assets}
out=${OPTIMA_CI_OUT:-$repo/out/ci}
baseline=${OPTIMA_CI_BASELINE:-$repo/scripts/ci/baseline-opt-small.json}
optima=${OPTIMA_BINARY:-}
if [[ -z "$optima" ]]; then
  optima="$("$repo/scripts/build.sh" release optima | tail -n 1)/optima"
fi
model="$assets/models/opt-small"
for need in "$model/config.json" "$assets/text/calib/c4.utf8" "$assets/text/tinystories/tiny.utf8"; do
  [[ -f "$need" ]] || { echo "regression: missing asset $need (set OPTIMA_ASSETS)" >&2; exit 3; }
done
mkdir -p "$out"
start=$(date +%s)

# Calibration: the first 90% of the C4 lines (opt-small's training part); evaluation: the last 225 TinyStories
# lines (held out from its training), blank ones included, as JSON Lines rows.
lines=$(wc -l <"$assets/text/calib/c4.utf8")
head -n $((lines * 9 / 10)) "$assets/text/calib/c4.utf8" >"$out/calib.txt"
tail -n 225 "$assets/text/tinystories/tiny.utf8" | python3 -c '
import json, sys
for line in sys.stdin.read().split("\n")[:-1]:
    print(json.dumps({"text": line}))' >"$out/heldout.jsonl"

set -x
"$optima" prune --model "$model" --out "$out/run" --overwrite --calib "$out/calib.txt" --nsamples 8 --seqlen 128 \
  --method sparsegpt --sparsity 0.5 --eval "$out/heldout.jsonl" --eval-seqlen 128
set +x
if [[ "${OPTIMA_CI_WRITE_BASELINE:-0}" == 1 ]]; then
  "$optima" check --write-baseline --baseline "$baseline" "$out/run"
  exit 0
fi
status=0
"$optima" check --baseline "$baseline" "$out/run" --junit "$out/check.xml" || status=$?
echo "regression: optima check exited $status after $(($(date +%s) - start)) s (JUnit: $out/check.xml)"
exit "$status"
