#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, AddressSanitizer + UndefinedBehaviorSanitizer) and runs each
# for a fixed time, starting from the committed seed corpus and dictionary. Prints one line per target (executions,
# coverage, corpus) and exits nonzero when any target finds a crash, sanitizer report, uncaught exception, hang
# (-timeout) or runaway memory (-rss_limit_mb); the input that did it is kept under build/fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz.sh [seconds-per-target (default 60)] [target...]   (targets: fuzz_* of tests/fuzz)
# Environment: OPTIMA_FUZZ_JSON=file also writes the results as JSON; OPTIMA_JOBS build jobs (default 2);
#              OPTIMA_ASSETS the offline assets (GPT-2 tokenizer for fuzz_bpe_encode).
# The working corpus grows in build/fuzz/corpus/<target>/ (never in the repository) and is reused by later runs.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-60}
shift || true
all_targets=(fuzz_safetensors_header fuzz_model_config fuzz_bpe_tokenizer_json fuzz_bpe_encode)
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")
log() { printf '[fuzz] %s\n' "$*" >&2; }

"$repo/scripts/apt_ensure.sh" cmake ninja-build pkg-config ccache libfmt-dev nlohmann-json3-dev libpcre2-dev \
  libsentencepiece-dev clang-14 libclang-rt-14-dev

# fuzz_model_config links LibTorch (the model families hold their forward passes too): the pinned one of setup.sh.
python=$("$repo/scripts/setup.sh" | tail -n 1)

build="$repo/build/fuzz"
export CCACHE_BASEDIR="$repo" CCACHE_NOHASHDIR=true
cmake -S "$repo/tests/fuzz" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++-14 -DOPTIMA_PYTHON="$python" >/dev/null
cmake --build "$build" -j "${OPTIMA_JOBS:-2}" --target "${targets[@]}" >&2

# Findings stop the run at once with a stack trace; leaks count too (the parsers own no global state).
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:symbolize=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

status=0
results=()
printf '%-26s %6s %10s %8s %6s %7s %6s  %s\n' target secs execs exec/s cov ft corpus result
for t in "${targets[@]}"; do
  name=${t#fuzz_}
  seeds="$repo/tests/fuzz/corpus/$name"
  corpus="$build/corpus/$name"
  artifacts="$build/artifacts/$name"
  mkdir -p "$corpus" "$artifacts"
  flog="$build/$t.log"
  start=$(date +%s)
  rc=0
  # -timeout: one input taking longer than 5 s is a hang; -rss_limit_mb also caps single allocations (a small file
  # must not make the parser allocate gigabytes); -use_value_profile guides mutations by the values compared, which
  # finds the size checks (a negative or huge dimension) that plain coverage does not see. The outer timeout only
  # guards against libFuzzer itself stalling.
  timeout --kill-after=30 $((seconds + 120)) "$build/$t" -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 \
    -use_value_profile=1 -dict="$repo/tests/fuzz/$name.dict" -artifact_prefix="$artifacts/" -print_final_stats=1 \
    "$corpus" "$seeds" >"$flog" 2>&1 || rc=$?
  elapsed=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$flog" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$flog" | tail -n 1)
  last=$(grep -E '^#[0-9]+' "$flog" | tail -n 1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
  result=clean
  if ((rc != 0)); then
    result="FINDING (exit $rc; log $flog)"
    status=1
  fi
  printf '%-26s %6s %10s %8s %6s %7s %6s  %s\n' "$t" "$elapsed" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" \
    "${corp:-?}" "$result"
  if ((rc != 0)); then
    grep -E 'ERROR|runtime error|SUMMARY|deadly signal|uncaught|terminate|breaks|Test unit written' "$flog" | head -n 20 >&2
    ls "$artifacts" >&2
  fi
  results+=("$(printf '{"target": "%s", "seconds": %s, "executions": %s, "exec_per_sec": %s, "coverage": %s, "features": %s, "corpus": %s, "clean": %s}' \
    "$t" "$elapsed" "${execs:-0}" "${rate:-0}" "${cov:-0}" "${ft:-0}" "${corp:-0}" "$( ((rc == 0)) && echo true || echo false)")")
done

if [[ -n "${OPTIMA_FUZZ_JSON:-}" ]]; then
  {
    printf '{\n  "seconds_per_target": %s,\n  "commit": "%s",\n  "machine": "%s cores, %s",\n  "targets": [\n' \
      "$seconds" "$(git -C "$repo" describe --always --dirty)" "$(nproc)" "$(clang++-14 --version | head -n 1)"
    for i in "${!results[@]}"; do
      printf '    %s%s\n' "${results[$i]}" "$( ((i + 1 < ${#results[@]})) && echo ,)"
    done
    printf '  ]\n}\n'
  } >"$OPTIMA_FUZZ_JSON"
  log "results written to $OPTIMA_FUZZ_JSON"
fi
exit $status
