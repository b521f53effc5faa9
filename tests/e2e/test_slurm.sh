#!/usr/bin/env bash
# Checks the SLURM templates without SLURM: they parse (bash -n), and in dry-run mode the array template maps each
# array task to the matching line of the example sweep file and refuses a task past its end; the single-job and
# many-process templates run the command they are given.
set -euo pipefail
dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../scripts/slurm" && pwd)
fail() { echo "FAIL: $*" >&2; exit 1; }
for f in "$dir"/*.sbatch; do bash -n "$f" || fail "$f does not parse"; done
mapfile -t lines < <(grep -v -E '^[[:space:]]*(#|$)' "$dir/example-sweep.txt")
((${#lines[@]} > 0)) || fail "example-sweep.txt has no settings"
for i in "${!lines[@]}"; do
  out=$(SLURM_ARRAY_TASK_ID=$i OPTIMA_DRY_RUN=1 OPTIMA=optima bash "$dir/prune-array.sbatch" M C O "$dir/example-sweep.txt" --seed 3)
  want="optima prune --model M --calib C --out O/task-$i"
  [[ $out == "$want "* ]] || fail "task $i: got '$out', expected it to start with '$want'"
  first=$(printf '%s' "${lines[i]}" | awk '{print $1, $2}')
  [[ $out == *"$first"* ]] || fail "task $i: '$out' lacks its setting '$first'"
  [[ $out == *"--seed 3 " ]] || fail "task $i: extra arguments missing in '$out'"
done
if SLURM_ARRAY_TASK_ID=${#lines[@]} OPTIMA_DRY_RUN=1 bash "$dir/prune-array.sbatch" M C O "$dir/example-sweep.txt" \
  2>/dev/null; then
  fail "a task past the sweep file's end must be refused"
fi
out=$(OPTIMA_DRY_RUN=1 OPTIMA=optima bash "$dir/prune.sbatch" --model M --sparsity 0.5)
[[ $out == "optima prune --model M --sparsity 0.5 " ]] || fail "prune.sbatch: got '$out'"
out=$(OPTIMA_DRY_RUN=1 OPTIMA=optima bash "$dir/prune-multi.sbatch" --model M --out O)
[[ $out == "srun --kill-on-bad-exit=1 optima prune --model M --out O " ]] || fail "prune-multi.sbatch: got '$out'"
echo "slurm templates: ${#lines[@]} array tasks mapped"
