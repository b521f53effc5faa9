#!/usr/bin/env bash
# Checks the SLURM templates without SLURM: they parse (bash -n), and in dry-run mode the array template maps each
# array task to the matching line of the example sweep file and refuses a task past its end; the single-job and
# many-process templates run the command they are given, with --resume; a preempted job passes SIGTERM on to
# optima and requeues itself when optima saved a resumable state.
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
  [[ $out == *"--seed 3 --resume " ]] || fail "task $i: extra arguments or --resume missing in '$out'"
done
if SLURM_ARRAY_TASK_ID=${#lines[@]} OPTIMA_DRY_RUN=1 bash "$dir/prune-array.sbatch" M C O "$dir/example-sweep.txt" \
  2>/dev/null; then
  fail "a task past the sweep file's end must be refused"
fi
out=$(OPTIMA_DRY_RUN=1 OPTIMA=optima bash "$dir/prune.sbatch" --model M --sparsity 0.5)
[[ $out == "optima prune --model M --sparsity 0.5 --resume " ]] || fail "prune.sbatch: got '$out'"
out=$(OPTIMA_DRY_RUN=1 OPTIMA=optima bash "$dir/prune-multi.sbatch" --model M --out O)
[[ $out == "srun --kill-on-bad-exit=1 optima prune --model M --out O --resume " ]] ||
  fail "prune-multi.sbatch: got '$out'"

# Preemption: SIGTERM to the batch shell reaches optima (a stand-in that exits 75 as optima does after saving its
# state; under prune-multi.sbatch through an srun stand-in that passes the signal on to its task, as srun does), and
# the job requeues itself through scontrol (a stand-in that records its arguments).
fake=$(mktemp -d)
trap 'rm -rf "$fake"' EXIT
cat >"$fake/optima" <<'FAKE'
#!/usr/bin/env bash
trap 'echo "$*" >"$FAKE_DIR/got-term"; exit 75' TERM
touch "$FAKE_DIR/started"
while true; do sleep 0.1; done
FAKE
cat >"$fake/srun" <<'FAKE'
#!/usr/bin/env bash
shift  # --kill-on-bad-exit=1
"$@" &
task=$!
trap 'kill -TERM "$task"' TERM
rc=0
wait "$task" || rc=$?
if ((rc > 128)); then rc=0; wait "$task" || rc=$?; fi
exit "$rc"
FAKE
printf '#!/usr/bin/env bash\necho "$*" >"$FAKE_DIR/requeued"\n' >"$fake/scontrol"
chmod +x "$fake/optima" "$fake/srun" "$fake/scontrol"
for template in prune.sbatch prune-multi.sbatch; do
  rm -f "$fake/started" "$fake/got-term" "$fake/requeued"
  FAKE_DIR=$fake PATH="$fake:$PATH" SLURM_JOB_ID=42 OPTIMA="$fake/optima" bash "$dir/$template" --model M &
  job=$!
  for _ in $(seq 100); do [[ -e $fake/started ]] && break; sleep 0.1; done
  [[ -e $fake/started ]] || fail "$template did not start optima"
  kill -TERM "$job"
  rc=0
  wait "$job" || rc=$?
  ((rc == 75)) || fail "$template: exit $rc after preemption, expected optima's 75"
  [[ -e $fake/got-term ]] || fail "$template did not pass SIGTERM on to optima"
  [[ $(cat "$fake/requeued" 2>/dev/null) == "requeue 42" ]] || fail "$template did not requeue job 42"
done
echo "slurm templates: ${#lines[@]} array tasks mapped"
