#!/usr/bin/env python3
"""Runs clang-tidy (checks in .clang-tidy) on optima's own sources (src/, tools/) from a build's
compile_commands.json, in parallel, and fails on any finding. Headers are analysed only when they are optima's.

Each translation unit with LibTorch's headers costs clang-tidy 20-60 s of CPU, so results are cached: a unit that
was clean is not analysed again while its key is unchanged. The key is the clang-tidy version, .clang-tidy, the
compile command, and the contents of the unit and of every project header it includes (the compiler's -MM list,
which leaves out system and LibTorch headers: those change only with the compile command's paths), with paths inside
the checkout taken relative to it. The cache lives in
$OPTIMA_CACHE/clang-tidy (default ~/.cache/optima/clang-tidy), beside the ccache and torch caches CI keeps.

Usage: scripts/tidy.py --build build/asan [-j 2] [--no-cache] [file ...]
"""
import argparse
import concurrent.futures
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIDY = "clang-tidy-14"


def project_units(build):
    db = json.loads((build / "compile_commands.json").read_text())
    units = {}
    for entry in db:
        f = Path(entry["file"]).resolve()
        rel = f.relative_to(REPO) if f.is_relative_to(REPO) else None
        if rel and rel.parts[0] in ("src", "tools") and f.suffix == ".cpp":
            units[f] = entry
    return units


def unit_key(entry, version, config):
    """Hash of everything clang-tidy's verdict on this unit depends on (see the module docstring)."""
    args = shlex.split(entry["command"]) if "command" in entry else list(entry["arguments"])
    if "-o" in args:  # -MM writes the dependency list to stdout instead of an object file
        i = args.index("-o")
        del args[i:i + 2]
    deps = subprocess.run(args + ["-MM"], cwd=entry["directory"], capture_output=True, text=True)
    if deps.returncode != 0:
        return None  # let clang-tidy report the problem
    # Paths inside the checkout are hashed relative to it, so that clones in other folders (CI's fresh clone)
    # share the cache, as they share ccache's entries.
    def relative(text):
        return text.replace(str(REPO), "@REPO@")

    h = hashlib.sha256()
    h.update(version.encode())
    h.update(config)
    h.update(relative(entry.get("command", " ".join(entry.get("arguments", [])))).encode())
    for dep in sorted(set(deps.stdout.replace("\\\n", " ").split()[1:])):
        p = Path(entry["directory"], dep).resolve()
        h.update(relative(str(p)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=Path, required=True, help="build folder with compile_commands.json")
    ap.add_argument("-j", type=int, default=int(os.environ.get("OPTIMA_JOBS", "2")))
    ap.add_argument("--no-cache", action="store_true", help="analyse every unit, cached or not")
    ap.add_argument("files", nargs="*", type=Path, help="only these sources")
    a = ap.parse_args()
    build = a.build.resolve()
    units = project_units(build)
    if a.files:
        wanted = {f.resolve() for f in a.files}
        units = {f: e for f, e in units.items() if f in wanted}
    version = subprocess.run([TIDY, "--version"], capture_output=True, text=True, check=True).stdout
    config = (REPO / ".clang-tidy").read_bytes()
    cache = Path(os.environ.get("OPTIMA_CACHE", Path.home() / ".cache" / "optima")) / "clang-tidy"
    cache.mkdir(parents=True, exist_ok=True)
    header_filter = "^" + str(REPO).replace(".", r"\.") + "/(include|src|tools)/"

    def run(item):
        f, entry = item
        key = None if a.no_cache else unit_key(entry, version, config)
        if key and (cache / key).exists():
            return f, "cached", 0.0, ""
        start = time.monotonic()
        # -Wno-unknown-warning-option: the database holds GCC's flags (-Wshadow=local), which clang does not know.
        r = subprocess.run([TIDY, "-p", str(build), "--quiet", "--extra-arg=-Wno-unknown-warning-option",
                            f"--header-filter={header_filter}", str(f)], capture_output=True, text=True)
        elapsed = time.monotonic() - start
        if r.returncode == 0:
            if key:
                (cache / key).touch()
            return f, "clean", elapsed, ""
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if "warnings generated" not in ln]
        return f, "FINDINGS", elapsed, "\n".join(lines)

    start = time.monotonic()
    failed = 0
    counts = {"clean": 0, "cached": 0, "FINDINGS": 0}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, a.j)) as pool:
        for f, status, elapsed, output in pool.map(run, sorted(units.items())):
            counts[status] += 1
            print(f"[tidy] {status:8s} {elapsed:6.1f} s  {f.relative_to(REPO)}", file=sys.stderr)
            if output:
                failed += 1
                print(output)
    print(f"[tidy] {len(units)} units: {counts['clean']} analysed clean, {counts['cached']} cached, "
          f"{counts['FINDINGS']} with findings, in {time.monotonic() - start:.0f} s (-j {a.j})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
