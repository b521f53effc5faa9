#!/usr/bin/env bash
# The reliability checks, run by scripts/test.sh (and so CI) after ctest, each also runnable on its own:
#   asan  the LibTorch-free unit tests (optima_base_tests) built with AddressSanitizer + UndefinedBehaviorSanitizer
#         (preset asan)
#   tidy  clang-tidy on optima's sources (scripts/tidy.py; clean units are cached, so only changed ones cost time)
#   fuzz  a short run of each fuzz target (scripts/fuzz.sh)
#   gpu   scripts/gpu_check.sh --cpu-only: the GPU check's steps on the CPU (solver tests, the benchmark's quick
#         paths, opt-small pruned with the exact and the iterative solver and compared), so that the script a GPU
#         machine runs keeps working, and the two solvers keep agreeing, between the rare runs on a GPU
# Installs the Debian packages they need when missing.
#
# Environment: OPTIMA_CHECKS, the checks to run (default asan,tidy,fuzz,gpu; none skips all); OPTIMA_FUZZ_SECONDS
# (default 15 per target, 0 skips); OPTIMA_ASAN_FILTER, a gtest filter for the sanitizer run (default: all of
# optima_base_tests); OPTIMA_JOBS (default 2).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export OPTIMA_JOBS=${OPTIMA_JOBS:-2}
export OPTIMA_ASSETS=${OPTIMA_ASSETS:-$repo/../shared/assets}
checks=",${OPTIMA_CHECKS:-asan,tidy,fuzz,gpu},"
wanted() { [[ $checks == *",$1,"* ]]; }
log() { printf '[check] %s\n' "$*" >&2; }
t0=$(date +%s)
summary=()
# Records how long a step took since $1 (seconds since the epoch), in the log now and in the closing summary.
done_step() {
  summary+=("$2 $(($(date +%s) - $1)) s")
  log "${summary[-1]}"
}

packages=()
wanted tidy && packages+=(clang-tidy-14)
wanted fuzz && packages+=(clang-14 libclang-rt-14-dev)
((${#packages[@]} == 0)) || "$repo/scripts/apt_ensure.sh" "${packages[@]}"

# --- unit tests under ASan + UBSan ------------------------------------------------------------------------------
# optima_base_tests: optima's own parsing, tokenizing and file code, where memory errors would be, without LibTorch.
# LibTorch is not instrumented, so the tests whose time goes into its kernels (optima_tests: solvers, selectors,
# forward passes) would check little under ASan and cost most of the build; `scripts/build.sh asan optima_tests`
# builds them too, for a deeper look by hand. The tidy step reads this build's compile_commands.json.
if wanted asan || wanted tidy; then
  build=$("$repo/scripts/build.sh" asan optima_base_tests | tail -n 1)
  done_step "$t0" "sanitizer build"
fi
if wanted asan; then
  t1=$(date +%s)
  export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:strict_init_order=1:check_initialization_order=1"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
  "$build/tests/optima_base_tests" --gtest_filter="${OPTIMA_ASAN_FILTER:-*}" --gtest_brief=1
  done_step "$t1" "sanitizer unit tests"
fi

# --- clang-tidy --------------------------------------------------------------------------------------------------
if wanted tidy; then
  t1=$(date +%s)
  # at::parallel_for is a header template whose parallel branch exists only under OpenMP, which optima's sources are
  # built without: there it runs every item on the calling thread (the masked-Cholesky passes had run their diagonal
  # blocks on one thread that way). optima's kernels use parallel_ranges or for_each_slice instead.
  if grep -rnE 'at::parallel_(for|reduce)[[:space:]]*\(' "$repo/src" "$repo/include" "$repo/tools"; then
    log "at::parallel_for/parallel_reduce runs serially in optima's sources: use parallel_ranges (core/parallel.h)"
    exit 1
  fi
  python3 "$repo/scripts/tidy.py" --build "$build" -j "$OPTIMA_JOBS"
  done_step "$t1" "clang-tidy"
fi

# --- fuzzing -----------------------------------------------------------------------------------------------------
if wanted fuzz && [[ ${OPTIMA_FUZZ_SECONDS:-15} != 0 ]]; then
  t1=$(date +%s)
  "$repo/scripts/fuzz.sh" "${OPTIMA_FUZZ_SECONDS:-15}"
  done_step "$t1" "fuzzing"
fi
# --- the GPU check's steps on the CPU ---------------------------------------------------------------------------
if wanted gpu; then
  t1=$(date +%s)
  out=$(mktemp --suffix=.json)
  # Built here as the suite builds it, then run as a GPU machine runs a build carried to it (--prebuilt).
  release=$("$repo/scripts/build.sh" release optima optima_tests optima_bench_solver | tail -n 1)
  OPTIMA_PYTHON="$repo/.venv/bin/python" "$repo/scripts/gpu_check.sh" --cpu-only --prebuilt "$release" --out "$out"
  rm -f "$out"
  done_step "$t1" "GPU check on the CPU"
fi
log "$(IFS=';'; echo "${summary[*]:-nothing run}" | sed 's/;/, /g'); all checks $(($(date +%s) - t0)) s"
