#!/usr/bin/env bash
# Installs everything optima needs to build and test, idempotently and quickly when it is already there:
#   - Debian packages: compiler tools, CLI11, nlohmann-json, spdlog/fmt, sentencepiece, PCRE2, GoogleTest, ccache,
#     and Gloo's headers (libgloo-dev: LibTorch's ProcessGroupGloo.hpp includes them, the wheel lacks them; only the
#     headers are used, see cmake/OptimaDistributed.cmake);
#   - LibTorch from the pinned PyPI torch wheel, in a virtual environment kept in a per-user cache folder keyed by
#     the torch version, so clean clones and CI reuse it; plus the Python development tools (transformers,
#     safetensors) that generate golden files and check interoperability. The optima binary never needs Python.
# The environment is linked at .venv in the repository. Prints the environment's Python path on its last line.
#
# Options (environment): OPTIMA_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/optima), OPTIMA_NO_DEV=1 to skip the
# Python development tools, OPTIMA_SKIP_APT=1 to skip Debian packages (a machine set up by other means),
# OPTIMA_TORCH_VERSION to set up another torch than the pinned one beside it (scripts/gpu_bundle.sh: the version a GPU
# machine carries; .venv keeps pointing at the pinned one).
set -euo pipefail

# Pinned versions. torch 2.12.0 is built against CUDA 13.0, the toolkit these machines carry.
TORCH_VERSION=2.12.0
DEV_REQUIREMENTS=("numpy==2.4.6" "transformers==5.23.0" "safetensors==0.8.0" "sentencepiece==0.2.3" "protobuf==7.36.2"
                  "matplotlib==3.11.2")
APT_PACKAGES=(build-essential cmake ninja-build ccache pkg-config git libcli11-dev nlohmann-json3-dev libspdlog-dev
              libfmt-dev libsentencepiece-dev libpcre2-dev libssl-dev libgtest-dev libgmock-dev libgloo-dev
              clang-format python3-venv)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages ---------------------------------------------------------------------------------------------
if [[ "${OPTIMA_SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  # python3-venv is only needed when the interpreter lacks the venv module (a Debian python3).
  if [[ " ${missing[*]} " == *" python3-venv "* ]] && python3 -c "import venv, ensurepip" 2>/dev/null; then
    missing=("${missing[@]/python3-venv}")
  fi
  missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# --- LibTorch and Python tools -----------------------------------------------------------------------------------
python_bin=${OPTIMA_BASE_PYTHON:-python3}
pytag=$("$python_bin" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
cache=${OPTIMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/optima}
torch_version=${OPTIMA_TORCH_VERSION:-$TORCH_VERSION}
venv="$cache/torch-$torch_version-$pytag"
want="torch==$torch_version"
[[ "${OPTIMA_NO_DEV:-0}" == 1 ]] || want="$want ${DEV_REQUIREMENTS[*]}"
stamp="$venv/.optima-installed"

if [[ ! -f "$stamp" ]] || ! grep -qxF "$want" "$stamp"; then
  mkdir -p "$cache"
  # One set-up at a time per cache (parallel CI jobs on one machine).
  exec 9>"$cache/.lock"
  flock 9
  if [[ ! -f "$stamp" ]] || ! grep -qxF "$want" "$stamp"; then
    [[ -x "$venv/bin/python" ]] || { log "creating $venv"; "$python_bin" -m venv "$venv"; }
    log "installing $want (first time only; torch with its CUDA libraries is several GB)"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $want
    echo "$want" >"$stamp"
  fi
  flock -u 9
fi

[[ "$torch_version" != "$TORCH_VERSION" ]] || ln -sfn "$venv" "$repo/.venv"
log "LibTorch $torch_version ready in $venv"
echo "$venv/bin/python"
