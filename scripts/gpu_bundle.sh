#!/usr/bin/env bash
# Builds, here, the folder that `scripts/gpu_check.sh --prebuilt DIR` runs on a GPU machine: optima,
# optima_bench_solver and tests/optima_tests with their CUDA sources, built against the LibTorch of the torch version
# that machine's python3 imports (its own image's, not the pinned one); the Debian libraries they link that such a
# machine may lack (lib/); and the assets the check reads (assets/). GPU time comes in short windows on machines
# without network, a compiler or these packages: the check then spends it on the GPU, not on a build.
#
# Usage: scripts/gpu_bundle.sh [--torch VERSION] [--out DIR]
#   --torch  the torch version of the GPU machine (default: the pinned one; 2.11.0 on the H200 image seen so far:
#            `python3 -c 'import torch; print(torch.__version__)'` there). Set up beside the pinned one in the cache.
#   --out    the folder (default .gpu in the repository, which git ignores); replaced only once it is complete.
# Then, on the GPU machine, from a copy of the repository with DIR in it: scripts/gpu_check.sh --prebuilt DIR
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=""
out="$repo/.gpu"
while (($#)); do
  case "$1" in
    --torch) version=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "usage: scripts/gpu_bundle.sh [--torch VERSION] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
log() { printf '[gpu_bundle] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
assets=${OPTIMA_ASSETS:-$repo/../shared/assets}

# LibTorch of that version (the venv is kept in the cache, keyed by the version, as the pinned one is).
python=$(OPTIMA_TORCH_VERSION=$version OPTIMA_NO_DEV=1 "$repo/scripts/setup.sh" | tail -n 1)
torch_version=$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')
build="$repo/build/bundle-torch-$torch_version"
export CCACHE_BASEDIR="$repo" CCACHE_NOHASHDIR=true
cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOPTIMA_BUILD_TESTS=ON -DOPTIMA_WITH_CUDA=ON \
  -DOPTIMA_PYTHON="$python" >&2
cmake --build "$build" -j "${OPTIMA_JOBS:-$(nproc)}" --target optima optima_bench_solver optima_tests >&2

# The folder, assembled beside its final name.
staging="$out.partial"
rm -rf "$staging"
mkdir -p "$staging/tests" "$staging/lib" "$staging/assets/configs" "$staging/assets/tokenizers" \
  "$staging/assets/text/calib"
for f in optima optima_bench_solver tests/optima_tests; do
  cp "$build/$f" "$staging/$f"
  strip "$staging/$f"
done
# The Debian libraries the programs link (LibTorch's own come from the GPU machine's torch; the C and C++ runtimes
# from its system, which is newer than Debian 12's).
ldd "$build/optima" "$build/tests/optima_tests" | awk '/=> \// {print $3}' | sort -u |
  grep -E '/lib(spdlog|fmt|sentencepiece|pcre2-8|crypto)\.so' | while read -r lib; do cp -L "$lib" "$staging/lib/"; done
[[ -n "$(ls "$staging/lib")" ]] || die "found none of the Debian libraries in ldd's output of $build/optima"
for a in configs/opt-125m tokenizers/opt text/calib/c4.utf8; do
  [[ -e "$assets/$a" ]] || die "asset missing: $assets/$a (set OPTIMA_ASSETS)"
  cp -r "$assets/$a" "$staging/assets/$a"
done
rm -rf "$out"
mv "$staging" "$out"
log "LibTorch $torch_version build in $out ($(du -sh "$out" | cut -f1)); on the GPU machine: scripts/gpu_check.sh --prebuilt $out"
echo "$out"
