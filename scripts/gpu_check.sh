#!/usr/bin/env bash
# One-command check of the CUDA path on a machine with an NVIDIA GPU (H100/H200 class) and no network: builds the
# release preset with its CUDA sources, runs every CUDA unit test (and fails if any is skipped), runs the solver
# benchmark's exact-vs-iterative section on the GPU, prunes a random OPT-125M-shaped model with SparseGPT + OPTIMA
# on CUDA and on the CPU, and writes one JSON document: GPU name, matrix-product rate, solver GEMM-equivalents,
# times, and the CPU-vs-CUDA agreement of every layer. Exits non-zero on any failure or mismatch.
#
# Usage: scripts/gpu_check.sh [--cpu-only] [--prebuilt DIR] [--out FILE]   (default FILE: gpu_check.json in the repo)
#   --cpu-only  no GPU needed: builds, runs the same steps on the CPU with small shapes (the prune on the assets'
#               opt-small, exact against iterative solver instead of CPU against CUDA), for checking the script itself.
#   --prebuilt DIR  no build: runs optima, optima_bench_solver and tests/optima_tests from DIR, built on another
#               machine against the same LibTorch version as the torch that this machine's python3 (or $OPTIMA_PYTHON)
#               imports. Their libraries come from that torch (and its NVIDIA packages), then DIR/lib (for the Debian
#               libraries this machine may lack: spdlog, fmt, sentencepiece), and DIR/assets unless OPTIMA_ASSETS is
#               set. scripts/gpu_bundle.sh builds such a folder. For a GPU machine without a compiler or without the
#               Debian packages, and to spend its scarce time on the checks rather than on a build.
#
# Setup: LibTorch comes from the torch virtual environment that scripts/setup.sh keeps in ~/.cache/optima (or
# $OPTIMA_CACHE). Without network it must already be there; the script then skips the Debian and Python-tool steps
# (OPTIMA_SKIP_APT=1, OPTIMA_NO_DEV=1). A build folder carried from another machine (build/release) is reused.
# Budget: under 8 minutes on an H100/H200 with 16 cores (build mostly from ccache or the carried build folder).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cpu_only=0
prebuilt=""
out="$repo/gpu_check.json"
while (($#)); do
  case "$1" in
    --cpu-only) cpu_only=1 ;;
    --prebuilt) prebuilt=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "usage: scripts/gpu_check.sh [--cpu-only] [--prebuilt DIR] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done
log() { printf '[gpu_check] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
started=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
assets=${OPTIMA_ASSETS:-$repo/../shared/assets}
# A folder from scripts/gpu_bundle.sh carries the assets the check reads.
[[ -z "${OPTIMA_ASSETS:-}" && -n "$prebuilt" && -d "$prebuilt/assets" ]] && assets="$prebuilt/assets"
export OPTIMA_ASSETS="$assets"  # the unit tests read it too

# --- the GPU -------------------------------------------------------------------------------------------------------
gpu="none (--cpu-only)"
if ((!cpu_only)); then
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA driver (use --cpu-only to check the script)"
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
  [[ -n "$gpu" ]] || die "nvidia-smi lists no GPU"
  log "GPU: $gpu"
fi

# --- build ---------------------------------------------------------------------------------------------------------
# No network: never try apt or pip for development tools; LibTorch's venv must be in the cache already.
export OPTIMA_SKIP_APT=${OPTIMA_SKIP_APT:-1} OPTIMA_NO_DEV=${OPTIMA_NO_DEV:-1}
t0=$(date +%s)
if [[ -n "$prebuilt" ]]; then
  build=$(cd "$prebuilt" && pwd) || die "--prebuilt: no folder $prebuilt"
  for f in optima optima_bench_solver tests/optima_tests; do
    [[ -x "$build/$f" ]] || die "--prebuilt: $build/$f is missing"
  done
  python=${OPTIMA_PYTHON:-python3}
  torch_libs=$("$python" -c '
import glob, os, torch
root = os.path.dirname(torch.__file__)
site = os.path.dirname(root)
dirs = [os.path.join(root, "lib")] + sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib")))
print(torch.__version__.split("+")[0], ":".join(d for d in dirs if os.path.isdir(d)))') ||
    die "--prebuilt: '$python' cannot import torch, whose libraries the binaries run with"
  read -r torch_version torch_libs <<<"$torch_libs"
  export LD_LIBRARY_PATH="$torch_libs:${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$build/lib"
  version=$("$build/optima" --version) || die "--prebuilt: $build/optima does not start (a library missing: ldd it)"
  [[ "$version" == *"LibTorch $torch_version,"* ]] ||
    die "--prebuilt: $build/optima was built against another LibTorch ($version) than $python's torch $torch_version"
else
  build=$(scripts/build.sh release optima optima_tests optima_bench_solver | tail -n 1) ||
    die "build failed (without network, LibTorch must already be in ${OPTIMA_CACHE:-~/.cache/optima}: run scripts/setup.sh where there is network)"
fi
build_seconds=$(($(date +%s) - t0))
log "built in ${build_seconds}s: $build ($("$build/optima" --version))"

# --- CUDA unit tests -----------------------------------------------------------------------------------------------
t0=$(date +%s)
filter='*Cuda*:*CUDA*'
((cpu_only)) && filter='SolveTest.*:SolveMaskTest.*'
"$build/tests/optima_tests" --gtest_filter="$filter" --gtest_brief=1 --gtest_output="json:$work/tests.json" >&2 ||
  die "unit tests ($filter) failed"
tests_seconds=$(($(date +%s) - t0))

# --- solver benchmark: exact and iterative paths on this device -----------------------------------------------------
t0=$(date +%s)
if ((cpu_only)); then
  OPTIMA_BENCH_DEVICE=cpu OPTIMA_BENCH_QUICK=1 "$build/optima_bench_solver" "$work/bench.json" paths ||
    die "solver benchmark failed"
else
  OPTIMA_BENCH_DEVICE=cuda "$build/optima_bench_solver" "$work/bench.json" paths || die "solver benchmark failed"
fi
bench_seconds=$(($(date +%s) - t0))

# --- end to end: an OPT-125M-shaped model (opt-small with --cpu-only), CUDA against CPU -----------------------------
t0=$(date +%s)
model="$work/model"
if ((cpu_only)); then
  model="$assets/models/opt-small"  # small, trained, with its own tokenizer
  [[ -f "$model/config.json" ]] || die "model missing: $model (set OPTIMA_ASSETS)"
  runs=("cpu-exact:cpu:exact" "cpu-iterative:cpu:iterative")
  nsamples=16 seqlen=128  # 2048 tokens: every Hessian (1024 inputs at most) has full rank
else
  # A random model needs a tokenizer for the calibration text: OPT-125M's own.
  "$build/optima" make-random --config "$assets/configs/opt-125m/config.json" \
    --tokenizer "$assets/tokenizers/opt" --out "$model" >&2 || die "make-random failed"
  runs=("cuda:cuda:auto" "cpu:cpu:auto")
  # 4096 tokens: more than fc2's 3072 inputs, so that its H is not singular by construction (with 1024, every fc2
  # went to the exact solver on a damped H: 243 of 351 s of the CPU prune on 2 cores; with 4096, 108 of 205 s).
  nsamples=4 seqlen=1024
fi
calib="$assets/text/calib/c4.utf8"
[[ -f "$calib" ]] || die "calibration text missing: $calib (set OPTIMA_ASSETS)"
declare -A prune_seconds
for run in "${runs[@]}"; do
  IFS=: read -r tag device solver <<<"$run"
  t1=$(date +%s)
  "$build/optima" prune --model "$model" --calib "$calib" --nsamples "$nsamples" --seqlen "$seqlen" \
    --method sparsegpt --sparsity 0.5 --reconstruct optima --qp-solver "$solver" --device "$device" \
    --out "$work/pruned-$tag" >&2 || die "prune on $device ($solver) failed"
  prune_seconds[$tag]=$(($(date +%s) - t1))
done
prune_total=$(($(date +%s) - t0))

# --- one JSON; fail on any mismatch ----------------------------------------------------------------------------------
python3 - "$work" "$out" "$gpu" "$cpu_only" "$build_seconds" "$tests_seconds" "$bench_seconds" "$prune_total" \
  "$started" "${runs[0]%%:*}" "${runs[1]%%:*}" "${prune_seconds[${runs[0]%%:*}]}" "${prune_seconds[${runs[1]%%:*}]}" <<'EOF'
import json, sys, time
work, out, gpu, cpu_only = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
build_s, tests_s, bench_s, prune_s, started = map(int, sys.argv[5:10])
a_tag, b_tag, a_s, b_s = sys.argv[10], sys.argv[11], int(sys.argv[12]), int(sys.argv[13])
tests = json.load(open(f"{work}/tests.json"))
cases = [c for s in tests["testsuites"] for c in s["testsuite"]]
skipped = [c["name"] for c in cases if c.get("result") == "SKIPPED"]
failures = []
if not cpu_only and skipped:
    failures.append(f"CUDA tests skipped on a GPU machine: {skipped}")
bench = json.load(open(f"{work}/bench.json"))
a = json.load(open(f"{work}/pruned-{a_tag}/prune_report.json"))
b = json.load(open(f"{work}/pruned-{b_tag}/prune_report.json"))
agreement = []
for la, lb in zip(a["layers"], b["layers"]):
    # Errors below 1e-6 (layers whose few calibration tokens they reproduce almost exactly, where H is singular) are
    # compared in absolute terms: there both are round-off, and their ratio means nothing.
    rel = abs(la["error_final"] - lb["error_final"]) / max(abs(lb["error_final"]), 1e-6)
    damping = [la["reconstruct_damping"], lb["reconstruct_damping"]]
    same_problem = abs(damping[0] - damping[1]) <= 1e-6 * max(damping)
    entry = {"layer": la["name"], "error_final": [la["error_final"], lb["error_final"]], "relative_difference": rel,
             "kkt_residual": [la["kkt_residual"], lb["kkt_residual"]], "qp_solver": [la["qp_solver"], lb["qp_solver"]],
             "reconstruct_damping": damping, "same_problem": same_problem}
    agreement.append(entry)
    # Where H is singular the problem solved is damped. Each run's Hessians carry the round-off of everything upstream
    # of them, so a layer whose H lies near the singular bound (condition 1e12) can be damped in one run and not in the
    # other; and the exact solver keeps the damping only in rows it could not polish (README: "Where optima differs
    # from the reference on purpose"). Such a layer solves another problem in each run: it is listed (same_problem
    # false) and its error is not compared.
    # Same masks up to fp32 ties, the same optimum: the layer errors agree closely; each solve reaches its tolerance.
    if same_problem and rel > 1e-3:
        failures.append(f"{la['name']}: error_final {la['error_final']:.6g} ({a_tag}) vs {lb['error_final']:.6g} ({b_tag})")
    for tag, l in ((a_tag, la), (b_tag, lb)):
        if not (l["kkt_residual"] <= 1e-8):
            failures.append(f"{l['name']} ({tag}): KKT residual {l['kkt_residual']:.3g} > 1e-8")
if len(a["layers"]) != len(b["layers"]) or not a["layers"]:
    failures.append("the two prune reports list different layers")
for e in bench["paths"]:
    for path in ("iterative", "exact"):
        if path in e and not (e[path]["kkt_residual"] <= 1e-8):
            failures.append(f"bench {e['layer']} {e['pattern']} {path}: KKT residual {e[path]['kkt_residual']:.3g}")
doc = {"gpu": gpu, "cpu_only": cpu_only,
       "seconds": {"build": build_s, "unit_tests": tests_s, "solver_bench": bench_s, "prunes": prune_s,
                   f"prune_{a_tag}": a_s, f"prune_{b_tag}": b_s, "total": int(time.time()) - started},
       "unit_tests": {"run": len(cases), "skipped": skipped},
       "rates": {k: v for k, v in bench.items() if k not in ("paths",)},
       "solver_paths": bench["paths"],
       "prune": {a_tag: {"total_seconds": a.get("timings", {}).get("total"), "reconstruct_seconds": sum(
                     l.get("seconds_reconstruct", 0) for l in a["layers"])},
                 b_tag: {"total_seconds": b.get("timings", {}).get("total"), "reconstruct_seconds": sum(
                     l.get("seconds_reconstruct", 0) for l in b["layers"])}},
       "layers_compared": sum(e["same_problem"] for e in agreement), "agreement": agreement, "failures": failures}
json.dump(doc, open(out, "w"), indent=2)
print(f"[gpu_check] wrote {out}", file=sys.stderr)
if failures:
    print("[gpu_check] FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
    sys.exit(1)
EOF
log "all checks passed in $(($(date +%s) - started))s"
