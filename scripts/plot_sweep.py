#!/usr/bin/env python3
"""Plots a sweep: perplexity against sparsity, one line per method (with and without OPTIMA) and pattern, the dense
model as a horizontal line. Reads the sweep.json that `optima prune --sparsity 0.5,0.6,... --eval FILE` writes and
saves a PNG beside it (or where --out says).

Development tool (matplotlib, installed by scripts/setup.sh into the project's Python environment); the optima
binary never needs it. Usage:
    .venv/bin/python scripts/plot_sweep.py OUT/sweep.json [--out OUT/sweep.png] [--log]
"""
import argparse
import json
import os
import sys


def series(table):
    """{(method label, pattern): [(sparsity, perplexity), ...]} sorted by sparsity."""
    lines = {}
    for row in table["settings"]:
        if "eval" not in row:
            continue
        label = row["method"] + ("+optima" if row["reconstruct"] == "optima" else "")
        lines.setdefault((label, row["pattern"]), []).append((row["sparsity"], row["eval"]["perplexity"]))
    return {key: sorted(points) for key, points in sorted(lines.items())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", help="sweep.json written by optima prune")
    parser.add_argument("--out", help="PNG to write (default: sweep.png beside sweep.json)")
    parser.add_argument("--log", action="store_true", help="logarithmic perplexity axis")
    args = parser.parse_args()
    with open(args.sweep) as f:
        table = json.load(f)
    lines = series(table)
    if not lines:
        sys.exit(f"{args.sweep}: no setting has a perplexity (run the sweep with --eval FILE)")
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for (label, pattern), points in lines.items():
        xs, ys = zip(*points)
        unstructured = pattern == "unstructured"
        ax.plot(xs, ys, marker="o" if unstructured else "s",
                linestyle=("--" if "+optima" in label else "-") if unstructured else "none",
                label=label if unstructured else f"{label} {pattern}")
    if "dense" in table:
        ax.axhline(table["dense"]["perplexity"], color="gray", linewidth=1, label="dense")
    ax.set_xlabel("sparsity")
    seqlen = table["dense"]["seqlen"] if "dense" in table else table.get("eval", {}).get("seqlen")
    dataset = os.path.basename(table.get("eval", {}).get("dataset", ""))
    ax.set_ylabel(f"perplexity ({dataset}, seqlen {seqlen})")
    ax.set_title(os.path.basename(os.path.normpath(table["model"])))
    if args.log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.sweep)), "sweep.png")
    fig.savefig(out + ".partial.png")
    os.replace(out + ".partial.png", out)
    print(out)


if __name__ == "__main__":
    main()
