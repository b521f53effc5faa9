#!/usr/bin/env python3
"""Prints the README's "Quality and speed" tables (Markdown) from bench/prune_cpu.json and bench/solver_cpu.json, so
that the figures in the README are the ones the benchmark scripts measured. Standard library only.

    scripts/bench_tables.py [--prune bench/prune_cpu.json] [--solver bench/solver_cpu.json]
"""
import argparse
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quality(prune):
    out = []
    for model in prune["models"]:
        if model["model"] != "stories260k":
            continue
        runs = {(r["method"], r["pattern"], r["reconstruct"]): r for r in model["runs"]}
        out.append(f"stories260k (real, trained), calibration {model['calibration']['nsamples']} windows of "
                   f"{model['calibration']['seqlen']} tokens of TinyStories, perplexity on held-out stories "
                   f"(seqlen {model['dense']['seqlen']}); dense: **{model['dense']['perplexity']:.2f}**\n")
        out.append("| selector | 50% | 50% + OPTIMA | 2:4 | 2:4 + OPTIMA |")
        out.append("|---|---|---|---|---|")
        for method in ("magnitude", "wanda", "sparsegpt"):
            cells = []
            for pattern in ("unstructured", "2:4"):
                for reconstruct in ("none", "optima"):
                    run = runs.get((method, pattern, reconstruct))
                    cells.append(f"{run['eval']['perplexity']:.2f}" if run else "-")
            out.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def opt_speed(prune):
    out = []
    for model in prune["models"]:
        if model["model"] != "opt-125m-random":
            continue
        cal = model["calibration"]
        out.append(f"Random OPT-125M-shaped model (real architecture and sizes), calibration {cal['nsamples']} C4 "
                   f"windows of {cal['seqlen']} tokens, 50% unstructured, 2 cores:\n")
        out.append("| run | wall (s) | of which OPTIMA (s) | mean layer error ‖(W−Ŵ)X‖²/‖WX‖² | max KKT residual | "
                   "peak RSS (MiB) |")
        out.append("|---|---|---|---|---|---|")
        for r in model["runs"]:
            kkt = f"{r['max_kkt_residual']:.1e}" if r["reconstruct"] == "optima" else "-"
            out.append(f"| {r['label']} | {r['wall_seconds']:.0f} | {r['timings']['reconstruct']:.0f} | "
                       f"{r['mean_layer_error']:.4f} | {kkt} | {r['peak_rss_bytes'] / 2**20:.0f} |")
        p = model.get("protocol_projection")
        if p:
            out.append("")
            out.append(f"At the field's {p['protocol_windows']} windows of {p['seqlen']} tokens (SparseGPT measured "
                       f"at {p['windows_measured'][0]} and {p['windows_measured'][1]} windows: "
                       f"{p['seconds_per_window']:.1f} s per window), SparseGPT would take "
                       f"{p['sparsegpt_wall_seconds_at_protocol']:.0f} s end to end; OPTIMA's exact solve adds "
                       f"{p['optima_reconstruct_seconds']:.0f} s, **{100 * p['optima_added_fraction_at_protocol']:.0f}%**"
                       f" (target: at most 25%).")
    return "\n".join(out)


def solver(sol):
    out = []
    rates = sol.get("rates", {})
    if rates:
        chol = {(e["m"]): e for e in rates["batched_cholesky_fp32"]}
        chol64 = {(e["m"]): e for e in rates["batched_cholesky_fp64"]}
        out.append(f"Machine rates measured in the same run: matrix product {rates['matmul_fp32_gflops']:.0f} GFLOP/s "
                   f"(fp32) / {rates['matmul_fp64_gflops']:.0f} (fp64); the solver's batched Cholesky "
                   + ", ".join(f"m={m}: {chol[m]['per_thread_slices_gflops']:.0f} / "
                               f"{chol64[m]['per_thread_slices_gflops']:.0f}" for m in sorted(chol))
                   + " GFLOP/s (fp32 / fp64).\n")
    out.append("| model | layer | shape | variant | layer time (s) | factorization GFLOP/s over the whole solve | "
               "KKT residual |")
    out.append("|---|---|---|---|---|---|---|")
    for e in sol["layers"]:
        if "timing_from" in e:
            continue
        extrapolated = " (from a subset of rows)" if e["extrapolated"] else ""
        out.append(f"| {e['model']} | {e['layer']} | {e['shape'][0]}×{e['shape'][1]} | {e['variant']} | "
                   f"{e['layer_seconds']:.1f}{extrapolated} | {e['factor_gflops_achieved']:.1f} | "
                   f"{e['kkt_residual']:.1e} |")
    proj = sol.get("projection_llama3_8b_h100")
    if proj:
        out.append("")
        out.append(f"Projection, LLaMA-3-8B at 50% on one H100: {proj['factorization_flops']:.2e} flop of "
                   f"factorizations; at the same fraction of peak as here "
                   f"({100 * proj['effective_factorization_rate_as_fraction_of_fp32_matmul_rate_here']:.0f}% of the "
                   f"fp32 matrix-product rate, i.e. "
                   f"{proj['effective_factorization_rate_as_fraction_of_fp32_matmul_rate_here'] * proj['h100_fp32_peak_flops'] / 1e12:.0f}"
                   f" TFLOP/s of the H100's {proj['h100_fp32_peak_flops'] / 1e12:.0f}), about "
                   f"**{proj['projected_seconds'] / 60:.0f} minutes**, against 40 hours for the reference solver.")
    return "\n".join(out)


def fc2_blocks(sol):
    """fc2 of every block against its target (bench/solver_cpu.json "fc2_blocks", scripts/bench_solver --fc2-blocks)."""
    section = sol.get("fc2_blocks")
    if not section:
        return ""
    by_block = {}
    for r in section["blocks"]:
        by_block.setdefault(r["block"], {})[r["pattern"]] = r
    out = [f"| block | condition estimate | 50%: GEMM-equivalents | row-iterations a row | 2:4: GEMM-equivalents | "
           f"row-iterations a row | input order (50% / 2:4) |", "|---|---|---|---|---|---|---|"]
    for block in sorted(by_block):
        cells = []
        for pattern in ("unstructured50", "2:4"):
            r = by_block[block].get(pattern)
            cells += [f"{r['gemm_equivalents']:.1f}", f"{r['row_iterations'] / r['rows']:.1f}"] if r else ["-", "-"]
        first = next(iter(by_block[block].values()))
        orders = " / ".join(by_block[block].get(p, {}).get("input_order", "") or "-" for p in ("unstructured50", "2:4"))
        out.append(f"| {block} | {first['condition_estimate']:.0e} | " + " | ".join(cells) + f" | {orders} |")
    summary = section["summary"]
    out.append("| median | | " + " | ".join(
        f"**{summary[p]['gemm_equivalents_median']:.1f}** | {summary[p]['row_iterations_per_row_mean']:.1f} (mean)"
        if p in summary else "- | -" for p in ("unstructured50", "2:4")) + " | |")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prune", default=os.path.join(REPO, "bench", "prune_cpu.json"))
    parser.add_argument("--solver", default=os.path.join(REPO, "bench", "solver_cpu.json"))
    args = parser.parse_args()
    with open(args.prune) as f:
        prune = json.load(f)
    with open(args.solver) as f:
        sol = json.load(f)
    print(quality(prune) + "\n\n" + opt_speed(prune) + "\n\n" + solver(sol) + "\n\n" + fc2_blocks(sol))


if __name__ == "__main__":
    main()
