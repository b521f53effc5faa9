#!/usr/bin/env bash
# Installs the Debian packages named on the command line that are not installed yet (quietly, with sudo when not
# root), and nothing when all are there. Used by the scripts that need tools beyond scripts/setup.sh's list (clang
# and its sanitizer runtimes, clang-tidy). OPTIMA_SKIP_APT=1 skips it, as in setup.sh.
set -euo pipefail
[[ "${OPTIMA_SKIP_APT:-0}" == 1 ]] && exit 0
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
printf '[apt] installing Debian packages: %s\n' "${missing[*]}" >&2
sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
