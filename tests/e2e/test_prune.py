#!/usr/bin/env python3
"""End-to-end tests of `optima prune` on the real stories260k model: every selector, unstructured and N:M, with and
without OPTIMA reconstruction; the written checkpoints are read back independently of optima (a small safetensors
reader below) and checked for the requested sparsity and pattern; bad settings are refused with clear messages and
leave no output; interrupted runs resume to byte-identical outputs.

Standard library only; ctest runs it as `prune` with the binary and the assets folder:
    python3 tests/e2e/test_prune.py OPTIMA_BINARY [ASSETS_DIR]
"""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

from resume_checks import assert_same_output
from safetensors_file import edit as edit_tensors, read_checkpoint, tensors as read_tensors

OPTIMA = None
ASSETS = None
EXIT_OK, EXIT_USAGE, EXIT_INPUT = 0, 2, 3
# The prunable linear layers of a LLaMA block (the architecture's own list, written out independently here).
LLAMA_LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj"]
SELECTORS = ["magnitude", "wanda", "sparsegpt"]


def optima(*args):
    return subprocess.run([OPTIMA, *args], capture_output=True, text=True, timeout=900)


class Prune(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = os.path.join(ASSETS, "models", "stories260k")
        cls.calib = os.path.join(ASSETS, "text", "tinystories", "tiny.utf8")
        if not os.path.isdir(cls.model):
            raise unittest.SkipTest(f"asset missing: {cls.model}")
        cls.tmp = tempfile.TemporaryDirectory(prefix="optima-prune-")
        cls.work = cls.tmp.name
        cls.dense = read_checkpoint(cls.model)
        # The checks below take every zero of an output for a pruned weight (per-row counts, masks, block-0 zeros):
        # that holds because the input has no zero weights.
        with_zeros = [name for name, t in cls.dense.items() if 0.0 in t.data]
        if with_zeros:
            raise AssertionError(f"{cls.model} has zero weights before pruning: {with_zeros}")
        cls.eval_text = os.path.join(cls.work, "eval.txt")
        with open(cls.calib, encoding="utf-8") as f:
            rows = [line for line in f.read().splitlines() if line.strip()]
        # Stories the calibration windows are unlikely to cover: the end of the file.
        with open(cls.eval_text, "w", encoding="utf-8") as f:
            f.write("\n".join(rows[-60:]) + "\n")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def assertExit(self, result, code, *fragments):
        self.assertEqual(result.returncode, code, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        for fragment in fragments:
            self.assertIn(fragment, result.stderr + result.stdout)

    def prune(self, out, *extra):
        return optima("prune", "--model", self.model, "--out", out, "--calib", self.calib, "--nsamples", "16",
                      "--seqlen", "128", *extra)

    def perplexity(self, model):
        result = optima("eval", "--model", model, "--dataset", self.eval_text, "--seqlen", "256", "--json")
        self.assertExit(result, EXIT_OK)
        return json.loads(result.stdout)["perplexity"]

    def evaluated(self, result):
        """The perplexity that `prune --eval` printed for the checkpoint it wrote (the same protocol as `eval`, in
        the same process: one start-up less per pruned model)."""
        found = re.search(r"^perplexity ([0-9.]+) ", result.stdout, re.MULTILINE)
        self.assertIsNotNone(found, result.stdout)
        return float(found.group(1))

    def check_pruned(self, out, pattern, sparsity):
        """Reads the output back and checks every prunable matrix against the requested pattern and sparsity and
        against the report; returns the report."""
        with open(os.path.join(out, "prune_report.json")) as f:
            report = json.load(f)
        self.assertEqual(len(report["layers"]), 35)
        layers = {layer["name"]: layer for layer in report["layers"]}
        method = report["settings"]["method"]
        pruned = read_checkpoint(out)
        self.assertEqual(sorted(pruned), sorted(self.dense), "the output must hold exactly the input's tensors")
        for name, (_, _, shape, values) in self.dense.items():
            is_linear = any(name.endswith(f"{linear}.weight") for linear in LLAMA_LINEARS)
            if not is_linear:
                self.assertEqual(pruned[name].data, values, f"{name} must be carried over unchanged")
                continue
            layer = layers[name[:-len(".weight")]]
            self.assertTrue(math.isfinite(layer["error_final"]), layer["name"])
            if layer["skipped"]:  # --skip: left dense
                self.assertEqual(pruned[name].data, values, f"{name} is skipped and must be unchanged")
                continue
            rows, cols = shape
            got = pruned[name].data
            zeros = [v == 0.0 for v in got]
            if report["settings"]["sparsity_allocation"] == "owl":
                # Each block's own target (OWL), recorded per layer; the checks below use it.
                sparsity = layer["target_sparsity"]
                self.assertEqual(sparsity, report["sparsity_allocation"]["block_sparsity"][layer["block"]], name)
            if pattern == "unstructured":
                fraction = sum(zeros) / len(zeros)
                # The report's sparsity is the zero fraction of the matrix as written.
                self.assertAlmostEqual(layer["sparsity"], fraction, delta=1e-12, msg=name)
                # Magnitude zeroes the int(numel * s) + 1 weights at or below one threshold per matrix, SparseGPT
                # the same per 128-column block (two in a 172-wide matrix), Wanda int(cols * s) per row: below s by
                # at most the rounding of each row, above it by at most one weight per threshold.
                self.assertGreaterEqual(fraction, sparsity - 1.0 / cols - 1e-9, name)
                self.assertLessEqual(fraction, sparsity + 2.0 / (rows * cols) + 1.0 / cols, name)
                if method in ("thanos", "admm"):  # one exact budget per matrix: int(s * rows * cols)
                    self.assertEqual(sum(zeros), int(sparsity * rows * cols), name)
                if method == "wanda":
                    per_row = int(cols * sparsity)
                    for r in range(rows):
                        self.assertEqual(sum(zeros[r * cols:(r + 1) * cols]), per_row,
                                         f"{name}: row {r} has not int({cols} * {sparsity}) zeros")
            else:
                self.assertTrue(layer["pattern_ok"], name)
                n, m = map(int, pattern.split(":"))
                for r in range(rows):
                    for g in range(0, cols, m):
                        self.assertGreaterEqual(sum(zeros[r * cols + g:r * cols + g + m]), n,
                                                f"{name}: row {r} group {g // m} has fewer than {n} zeros")
        # The input model is never modified, and no temporary output is left behind.
        self.assertEqual(read_checkpoint(self.model), self.dense)
        self.assertEqual([f for f in os.listdir(self.work) if "partial" in f or f.startswith(".")], [])
        return report

    def check_masks(self, out, pattern):
        """Checks masks.safetensors against the written weights: one mask per prunable matrix, [rows, ceil(cols/8)]
        bytes, bit c % 8 of byte c // 8 (least significant first) set exactly where the written weight is zero, the
        padding bits clear, and for N:M exactly N bits set in each group of M."""
        masks = read_tensors(os.path.join(out, "masks.safetensors"))
        pruned = read_checkpoint(out)
        linears = sorted(name[:-len(".weight")] for name in self.dense
                         if any(name.endswith(f"{linear}.weight") for linear in LLAMA_LINEARS))
        self.assertEqual(sorted(masks), [f"{name}.mask" for name in linears])
        for name in linears:
            _, dtype, shape, packed = masks[name + ".mask"]
            (rows, cols), values = pruned[name + ".weight"].shape, pruned[name + ".weight"].data
            self.assertEqual((dtype, shape), ("U8", [rows, (cols + 7) // 8]), name)
            width = shape[1]
            for r in range(rows):
                bits = [(packed[r * width + c // 8] >> (c % 8)) & 1 for c in range(8 * width)]
                self.assertEqual(bits[:cols], [int(v == 0.0) for v in values[r * cols:(r + 1) * cols]],
                                 f"{name}: row {r}: the mask is not the written zeros")
                self.assertEqual(sum(bits[cols:]), 0, f"{name}: row {r}: padding bits set")
                if pattern != "unstructured":
                    n, m = map(int, pattern.split(":"))
                    for g in range(0, cols, m):
                        self.assertEqual(sum(bits[g:g + m]), n, f"{name}: row {r} group {g // m}")

    def test_every_selector_and_pattern_with_and_without_optima(self):
        dense_ppl = self.perplexity(self.model)
        self.assertLess(dense_ppl, 20)
        for pattern, sparsity in (("unstructured", 0.5), ("2:4", 0.5)):
            for method in SELECTORS:
                with self.subTest(method=method, pattern=pattern):
                    base = os.path.join(self.work, f"{method}-{pattern.replace(':', 'of')}")
                    args = ["--method", method, "--pattern", pattern, "--eval", self.eval_text, "--eval-seqlen", "256"]
                    if pattern == "unstructured":
                        args += ["--sparsity", str(sparsity)]
                    result = self.prune(base, *args)
                    self.assertExit(result, EXIT_OK, "overall sparsity")
                    ppl_plain = self.evaluated(result)
                    plain = self.check_pruned(base, pattern, sparsity)
                    result = self.prune(base + "-optima", *args, "--reconstruct", "optima")
                    self.assertExit(result, EXIT_OK, "kkt")
                    ppl_optima = self.evaluated(result)
                    optimal = self.check_pruned(base + "-optima", pattern, sparsity)
                    written_plain, written_optimal = read_checkpoint(base), read_checkpoint(base + "-optima")
                    for before, after in zip(plain["layers"], optimal["layers"]):
                        self.assertEqual(before["name"], after["name"])
                        self.assertLess(after["kkt_residual"], 1e-8, after["name"])
                        # Within a run, OPTIMA's exact solve on the selector's mask can only lower the error (up to
                        # the damping of the solve).
                        self.assertLessEqual(after["error_final"], after["error_selector"] * (1 + 1e-6) + 1e-12,
                                             after["name"])
                        if after["block"] != 0:
                            continue
                        # Reference propagation: block 0 sees the same (dense) inputs with and without OPTIMA, so
                        # its layers get the same masks (the same zeros in both outputs) and the same selector
                        # error, and OPTIMA ends at or below the run without it. Later blocks see different inputs.
                        self.assertAlmostEqual(after["error_selector"], before["error_selector"],
                                               delta=1e-9 * before["error_selector"], msg=after["name"])
                        self.assertLessEqual(after["error_final"], before["error_final"] * (1 + 1e-6) + 1e-12,
                                             after["name"])
                        weight = after["name"] + ".weight"
                        self.assertEqual([v == 0.0 for v in written_optimal[weight].data],
                                         [v == 0.0 for v in written_plain[weight].data],
                                         f"{weight}: the zeros differ with and without OPTIMA")
                    for ppl in (ppl_plain, ppl_optima):
                        self.assertTrue(math.isfinite(ppl))
                        self.assertGreater(ppl, dense_ppl * 0.98)
                    # A pruned model still predicts in-domain text far better than chance (512).
                    self.assertLess(ppl_optima, 100)

    def test_thanos_and_admm_with_optima(self):
        # The selectors with their own parity tests (unit); here: the command line reaches them, every matrix gets
        # exactly the requested pattern (int(s * rows * cols) zeros, checked in check_pruned), and OPTIMA on top
        # converges. Only with --reconstruct optima, to keep the test short: its zeros are the selector's mask.
        for method in ("thanos", "admm"):
            for pattern in ("unstructured", "2:4"):
                with self.subTest(method=method, pattern=pattern):
                    out = os.path.join(self.work, f"{method}-{pattern.replace(':', 'of')}-optima")
                    args = ["--method", method, "--pattern", pattern, "--reconstruct", "optima"]
                    if pattern == "unstructured":
                        args += ["--sparsity", "0.5"]
                    self.assertExit(self.prune(out, *args), EXIT_OK, "overall sparsity", "kkt")
                    report = self.check_pruned(out, pattern, 0.5)
                    for layer in report["layers"]:
                        self.assertLess(layer["kkt_residual"], 1e-8, layer["name"])
                        self.assertLessEqual(layer["error_final"], layer["error_selector"] * (1 + 1e-6) + 1e-12,
                                             layer["name"])

    def test_save_masks_and_hessians(self):
        out, hessians = os.path.join(self.work, "masks"), os.path.join(self.work, "hessians")
        self.assertExit(self.prune(out, "--method", "wanda", "--pattern", "2:4", "--save-masks", "--save-hessians",
                                   hessians), EXIT_OK)
        self.check_masks(out, "2:4")
        files = sorted(os.listdir(hessians))
        self.assertEqual(files, [f"hessians-block-{b:04d}.safetensors" for b in range(5)])
        block = read_tensors(os.path.join(hessians, files[0]))
        sites = {"attn_in": 64, "attn_out": 64, "mlp_in": 64, "mlp_hidden": 172}
        self.assertEqual({k: v.shape for k, v in block.items()},
                         {f"model.layers.0.{site}": [n, n] for site, n in sites.items()})
        for _, _, shape, values in block.values():
            n = shape[0]
            for i in range(n):
                self.assertGreaterEqual(values[i * n + i], 0.0)
                for j in range(i):
                    self.assertAlmostEqual(values[i * n + j], values[j * n + i], delta=1e-5 * abs(values[i * n + i]))

    def linear_weights(self, out):
        """{name: values} of the prunable matrices of a checkpoint folder."""
        return {name: t.data for name, t in read_checkpoint(out).items()
                if any(name.endswith(f"{linear}.weight") for linear in LLAMA_LINEARS)}

    def test_masks_from_a_file_or_a_checkpoint(self):
        source = os.path.join(self.work, "mask-source")
        self.assertExit(self.prune(source, "--method", "wanda", "--pattern", "2:4", "--save-masks"), EXIT_OK)
        wanted = self.linear_weights(source)
        masks_file = os.path.join(source, "masks.safetensors")
        # optima's masks, and the zeros of the pruned checkpoint (its folder, its weight file): Wanda changes no kept
        # weight, so taking its masks from any of them writes the same matrices. No calibration needed.
        for tag, masks in (("masks", masks_file), ("folder", source),
                           ("file", os.path.join(source, "model.safetensors"))):
            with self.subTest(masks=tag):
                out = os.path.join(self.work, f"from-{tag}")
                self.assertExit(optima("prune", "--model", self.model, "--out", out, "--method", "masks", "--masks",
                                       masks, "--pattern", "2:4"), EXIT_OK)
                self.assertEqual(self.linear_weights(out), wanted)
                report = self.check_pruned(out, "2:4", 0.5)
                self.assertEqual((report["settings"]["method"], report["settings"]["masks"]), ("masks", masks))
        # With OPTIMA (calibration needed for H): Wanda + OPTIMA's own masks (later blocks' masks depend on the
        # reconstructed earlier blocks) give the weights that run wrote, since the masks and H are its.
        reference = os.path.join(self.work, "mask-source-optima")
        self.assertExit(self.prune(reference, "--method", "wanda", "--pattern", "2:4", "--reconstruct", "optima",
                                   "--save-masks"), EXIT_OK)
        out = os.path.join(self.work, "from-masks-optima")
        self.assertExit(self.prune(out, "--method", "masks", "--masks", os.path.join(reference, "masks.safetensors"),
                                   "--pattern", "2:4", "--reconstruct", "optima"), EXIT_OK)
        report = self.check_pruned(out, "2:4", 0.5)
        got, expected = self.linear_weights(out), self.linear_weights(reference)
        for name, values in expected.items():
            self.assertEqual(sum((a == 0.0) != (b == 0.0) for a, b in zip(got[name], values)), 0, name)
            scale = max(abs(v) for v in values)
            self.assertLessEqual(max(abs(a - b) for a, b in zip(got[name], values)), 1e-6 * scale, name)
        for layer in report["layers"]:
            self.assertLess(layer["kkt_residual"], 1e-8, layer["name"])
            self.assertLessEqual(layer["error_final"], layer["error_selector"] * (1 + 1e-9), layer["name"])

        # Bad data: exit 3 naming the file and the tensor, nothing written.
        refused = os.path.join(self.work, "masks-refused")
        unstructured = os.path.join(self.work, "mask-source-unstructured")
        self.assertExit(self.prune(unstructured, "--method", "wanda", "--sparsity", "0.5"), EXIT_OK)
        result = optima("prune", "--model", self.model, "--out", refused, "--method", "masks", "--masks",
                        unstructured, "--pattern", "2:4")
        self.assertExit(result, EXIT_INPUT, os.path.join(unstructured, "model.safetensors"),
                        "model.layers.0.self_attn.q_proj", "breaks the 2:4 pattern", "at least 2 pruned")
        broken = os.path.join(self.work, "broken-masks.safetensors")
        shutil.copy(masks_file, broken)
        victim = "model.layers.3.mlp.down_proj.mask"

        def reshape(items):
            i = next(i for i, t in enumerate(items) if t.name == victim)
            items[i] = items[i]._replace(shape=[items[i].shape[0] // 2, items[i].shape[1] * 2])
        edit_tensors(broken, reshape)
        result = optima("prune", "--model", self.model, "--out", refused, "--method", "masks", "--masks", broken)
        self.assertExit(result, EXIT_INPUT, broken, victim, "expected U8 [64, 22]", "found U8 [32, 44]")

        def drop(items):
            items.remove(next(t for t in items if t.name == victim))
        edit_tensors(broken, drop)
        result = optima("prune", "--model", self.model, "--out", refused, "--method", "masks", "--masks", broken)
        self.assertExit(result, EXIT_INPUT, broken, victim, "no such tensor")
        for args, code, fragment in (
                (["--masks", os.path.join(self.work, "no-such-masks")], EXIT_USAGE, "no-such-masks"),
                ([], EXIT_USAGE, "--method masks needs --masks"),
                (["--masks", masks_file, "--sparsity-allocation", "owl", "--calib", self.calib], EXIT_USAGE,
                 "takes every mask from a file")):
            self.assertExit(optima("prune", "--model", self.model, "--out", refused, "--method", "masks", *args),
                            code, fragment)
        self.assertExit(self.prune(refused, "--method", "wanda", "--masks", masks_file), EXIT_USAGE,
                        "--masks is read by --method masks only")
        self.assertFalse(os.path.exists(refused))
        self.assertFalse(os.path.exists(refused + ".resume"))

    def check_owl(self, out, sparsity, lam):
        """The OWL report: per-block sparsities that average to the target over a spread of 2·lambda, more outliers
        fewer zeros, every layer's target its block's; and Wanda's per-row zero counts (check_pruned)."""
        report = self.check_pruned(out, "unstructured", sparsity)
        allocation = report["sparsity_allocation"]
        self.assertEqual((allocation["method"], allocation["owl_lambda"], allocation["owl_threshold"]),
                         ("owl", lam, 5.0))
        blocks, ratios = allocation["block_sparsity"], allocation["outlier_ratio"]
        self.assertEqual(len(blocks), 5)
        self.assertAlmostEqual(sum(blocks) / len(blocks), sparsity, delta=1e-12)
        self.assertAlmostEqual(max(blocks) - min(blocks), 2 * lam, delta=1e-12)
        for i in range(5):
            for j in range(5):
                if ratios[i] > ratios[j]:
                    self.assertLess(blocks[i], blocks[j])
        return report

    def test_owl_allocation(self):
        out = os.path.join(self.work, "owl")
        result = self.prune(out, "--method", "wanda", "--sparsity", "0.7", "--sparsity-allocation", "owl")
        self.assertExit(result, EXIT_OK, "dense pass over 5 blocks")
        report = self.check_owl(out, 0.7, 0.08)
        self.assertGreater(report["sparsity_allocation"]["seconds_dense_pass"], 0)
        # Uniform gives every layer the target; OWL at lambda 0 too.
        zero = os.path.join(self.work, "owl-zero")
        self.assertExit(self.prune(zero, "--method", "wanda", "--sparsity", "0.7", "--sparsity-allocation", "owl",
                                   "--owl-lambda", "0"), EXIT_OK)
        with open(os.path.join(zero, "prune_report.json")) as f:
            self.assertEqual(json.load(f)["sparsity_allocation"]["block_sparsity"], [0.7] * 5)
        # Refused settings: exit 2, nothing written.
        refused = os.path.join(self.work, "owl-refused")
        for args, fragment in ((["--pattern", "2:4"], "nothing to share"),
                               (["--sparsity", "0.7", "--owl-lambda", "0.15"], "--owl-lambda"),
                               (["--owl-lambda", "-0.1"], "--owl-lambda"),
                               (["--owl-threshold", "0"], "--owl-threshold"),
                               (["--sparsity-allocation", "outlier"], "--sparsity-allocation")):
            with self.subTest(args=args):
                self.assertExit(self.prune(refused, "--method", "wanda", "--sparsity-allocation", "owl", *args),
                                EXIT_USAGE, fragment)
                self.assertFalse(os.path.exists(refused))
        self.assertExit(optima("prune", "--model", self.model, "--out", refused, "--method", "magnitude",
                               "--sparsity-allocation", "owl"), EXIT_USAGE, "needs calibration data")
        self.assertFalse(os.path.exists(refused))

    def test_owl_resumes_and_sweeps(self):
        settings = ["--method", "sparsegpt", "--sparsity", "0.7", "--sparsity-allocation", "owl", "--save-masks"]
        reference = os.path.join(self.work, "owl-uninterrupted")
        self.assertExit(self.prune(reference, *settings), EXIT_OK)
        self.check_owl(reference, 0.7, 0.08)
        out = os.path.join(self.work, "owl-resumed")
        code, message = self.interrupt(out, 1, signal.SIGTERM, *settings)
        self.assertEqual(code, 75, message)
        with open(os.path.join(out + ".resume", "state.json")) as f:
            state = json.load(f)
        self.assertEqual(state["next_block"], 2)
        with open(os.path.join(reference, "prune_report.json")) as f:
            self.assertEqual(state["allocation"]["block_sparsity"],
                             json.load(f)["sparsity_allocation"]["block_sparsity"])
        # The allocation settings are part of the fingerprint.
        self.assertExit(self.prune(out, *settings, "--owl-lambda", "0.05", "--resume"), EXIT_USAGE,
                        "owl_lambda 0.08 -> 0.05")
        self.assertExit(self.prune(out, *settings[:-3], "--save-masks", "--resume"), EXIT_USAGE,
                        'sparsity_allocation "owl" -> "uniform"')
        result = self.prune(out, *settings, "--resume")
        self.assertExit(result, EXIT_OK, "continuing at block 2")
        self.assertNotIn("dense pass over", result.stderr)  # the saved per-block sparsities are used
        resumed, uninterrupted = assert_same_output(self, out, reference, "the uninterrupted OWL run's")
        self.assertEqual(resumed["sparsity_allocation"]["block_sparsity"],
                         uninterrupted["sparsity_allocation"]["block_sparsity"])
        # A sweep lists the allocation like the other settings; N:M settings are not repeated for OWL.
        sweep = os.path.join(self.work, "owl-sweep")
        self.assertExit(self.prune(sweep, "--method", "wanda", "--sparsity", "0.7", "--pattern", "unstructured,2:4",
                                   "--sparsity-allocation", "uniform,owl"), EXIT_OK)
        self.assertEqual(sorted(os.listdir(sweep)),
                         ["sweep.json", "wanda-2of4-0.5", "wanda-unstructured-0.7", "wanda-unstructured-0.7-owl"])
        self.check_owl(os.path.join(sweep, "wanda-unstructured-0.7-owl"), 0.7, 0.08)
        self.check_pruned(os.path.join(sweep, "wanda-unstructured-0.7"), "unstructured", 0.7)
        self.check_pruned(os.path.join(sweep, "wanda-2of4-0.5"), "2:4", 0.5)

    def test_true_sequential_propagation(self):
        out = os.path.join(self.work, "sequential")
        self.assertExit(self.prune(out, "--method", "sparsegpt", "--propagation", "true-sequential", "--sparsity",
                                   "0.5"), EXIT_OK)
        report = self.check_pruned(out, "unstructured", 0.5)
        self.assertEqual(report["settings"]["propagation"], "true-sequential")

    def test_iterative_solver_and_fp64_statistics_agree_with_the_exact_path(self):
        runs = {}
        for tag, extra in (("exact", []), ("cg", ["--qp-solver", "cg", "--qp-tol", "1e-9"]),  # cg: an alias
                           ("fp64", ["--hessian-dtype", "fp64"])):
            out = os.path.join(self.work, f"solver-{tag}")
            self.assertExit(self.prune(out, "--method", "sparsegpt", "--sparsity", "0.5", "--reconstruct", "optima",
                                       *extra), EXIT_OK)
            runs[tag] = self.check_pruned(out, "unstructured", 0.5)
        self.assertEqual(runs["cg"]["settings"]["qp_solver"], "iterative")
        self.assertEqual(runs["exact"]["settings"]["qp_solver"], "auto")
        self.assertEqual(runs["fp64"]["settings"]["hessian_dtype"], "fp64")
        for exact, cg, fp64 in zip(runs["exact"]["layers"], runs["cg"]["layers"], runs["fp64"]["layers"]):
            self.assertTrue(cg["qp_converged"], cg["name"])
            self.assertGreater(cg["qp_iterations"], 0, cg["name"])
            self.assertGreaterEqual(cg["qp_pruned_space_rounds"], 0, cg["name"])
            self.assertLessEqual(cg["kkt_residual"], 1e-9, cg["name"])
            self.assertEqual(cg["qp_solver"], "iterative", cg["name"])
            self.assertEqual(cg["qp_abandoned_iterations"], 0, cg["name"])  # only auto gives a CG up
            # auto on these narrow layers predicts the exact solver cheaper, and records both predictions.
            self.assertEqual(exact["qp_solver"], "exact", exact["name"])
            self.assertEqual(exact["qp_abandoned_iterations"], 0, exact["name"])
            self.assertLess(exact["qp_predicted_exact_units"], exact["qp_predicted_iterative_units"], exact["name"])
            # Both solve the undamped problem where H is not singular (the exact one polishes its damped optimum).
            # Each to its own --qp-tol: the default (the exact one's polishing) and the CG's 1e-9.
            for run, tol in ((exact, runs["exact"]["settings"]["qp_tol"]), (cg, 1e-9)):
                self.assertGreaterEqual(run["kkt_residual_undamped"], 0, run["name"])
                if run["reconstruct_damping"] == 0:
                    self.assertEqual(run["kkt_residual_undamped"], run["kkt_residual"], run["name"])
                    self.assertLessEqual(run["kkt_residual_undamped"], tol, run["name"])
            # Same masks and Hessians (the selector sees the same inputs): the same optimum, whichever solver.
            self.assertAlmostEqual(cg["error_final"], exact["error_final"], delta=1e-6 * exact["error_final"] + 1e-12,
                                   msg=cg["name"])
            # fp64 accumulation changes H by fp32 rounding only: masks may flip at ties, errors stay close.
            self.assertAlmostEqual(fp64["error_final"], exact["error_final"], delta=0.05 * exact["error_final"],
                                   msg=fp64["name"])

    def test_ready_configs(self):
        configs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs")
        names = sorted(f for f in os.listdir(configs) if f.endswith(".toml"))
        self.assertGreaterEqual(len(names), 4)
        for name in names:
            with self.subTest(config=name):
                path = os.path.join(configs, name)
                with open(path) as f:
                    wanted = dict(line.strip().replace(" ", "").split("=", 1) for line in f
                                  if "=" in line and not line.startswith("#"))
                dumped = optima("prune", "--config", path, "--model", self.model, "--out", "x", "--dump-config")
                self.assertExit(dumped, EXIT_OK)
                got = dict(line.replace(" ", "").split("=", 1) for line in dumped.stdout.splitlines()
                           if "=" in line and not line.startswith("#"))
                for key, value in wanted.items():
                    self.assertEqual(got.get(key), value, f"{name}: {key}")
                # Each runs as given, with a calibration set small enough for a test.
                out = os.path.join(self.work, "config-" + name[:-5])
                self.assertExit(optima("prune", "--config", path, "--model", self.model, "--out", out, "--calib",
                                       self.calib, "--nsamples", "4", "--seqlen", "128"), EXIT_OK)
                report = self.check_pruned(out, wanted["pattern"].strip('"'), float(wanted.get("sparsity", "0.5")))
                self.assertEqual(report["settings"]["reconstruct"], wanted["reconstruct"].strip('"'))

    def test_sweep_shares_calibration_and_tabulates_every_setting(self):
        out = os.path.join(self.work, "sweep")
        result = self.prune(out, "--method", "magnitude,wanda", "--reconstruct", "none,optima", "--pattern",
                            "unstructured,2:4", "--sparsity", "0.3,0.6", "--eval", self.eval_text, "--eval-seqlen",
                            "128", "--eval-max-windows", "3")
        self.assertExit(result, EXIT_OK, "dense", "wanda+optima-2of4-0.5")
        self.assertEqual(result.stderr.count("share the calibration set"), 1)
        names = {f"{m}{r}-{p}" for m in ("magnitude", "wanda") for r in ("", "+optima")
                 for p in ("unstructured-0.3", "unstructured-0.6", "2of4-0.5")}
        self.assertEqual(set(os.listdir(out)), names | {"sweep.json"})
        with open(os.path.join(out, "sweep.json")) as f:
            table = json.load(f)
        self.assertEqual({row["name"] for row in table["settings"]}, names)
        self.assertEqual((table["dense"]["seqlen"], table["dense"]["windows"]), (128, 3))
        for row in table["settings"]:
            # The setting requested for this folder, from its name (e.g. wanda+optima-unstructured-0.6, 2of4-0.5).
            pattern, requested = row["name"].split("-")[1:]
            if pattern == "unstructured":
                sparsity = float(requested)
            else:
                n, m = map(int, pattern.split("of"))
                pattern, sparsity = f"{n}:{m}", n / m
            self.assertEqual((row["pattern"], row["sparsity"]), (pattern, sparsity), row["name"])
            self.check_pruned(os.path.join(out, row["name"]), pattern, sparsity)
            self.assertGreater(row["eval"]["perplexity"], table["dense"]["perplexity"] * 0.98, row["name"])
            self.assertTrue(math.isfinite(row["eval"]["perplexity"]))
        by_name = {row["name"]: row for row in table["settings"]}
        for base in ("wanda-unstructured-0.6", "magnitude-2of4-0.5"):
            plus = base.replace("-", "+optima-", 1)
            self.assertLessEqual(by_name[plus]["mean_layer_error"], by_name[base]["mean_layer_error"], base)
        # The plot, where the development environment with matplotlib is at hand.
        python = os.environ.get("OPTIMA_PYTHON")
        if python:
            script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "plot_sweep.py")
            png = os.path.join(self.work, "sweep.png")
            plotted = subprocess.run([python, script, os.path.join(out, "sweep.json"), "--out", png],
                                     capture_output=True, text=True, timeout=300)
            self.assertEqual(plotted.returncode, 0, plotted.stderr)
            with open(png, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        # A setting listed twice, and a sweep into an existing folder, are refused.
        self.assertExit(self.prune(os.path.join(self.work, "dup"), "--sparsity", "0.5,0.5", "--method", "magnitude"),
                        EXIT_USAGE, "twice")
        self.assertExit(self.prune(out, "--sparsity", "0.4,0.5", "--method", "magnitude"), EXIT_USAGE, "--overwrite")

    def interrupt(self, out, after_block, signal_number, *extra):
        """Starts a run, sends `signal_number` once block `after_block` is done; returns (exit code, messages)."""
        with subprocess.Popen([OPTIMA, "--log-level", "debug", "prune", "--model", self.model, "--out", out,
                               "--calib", self.calib, "--nsamples", "16", "--seqlen", "128", *extra],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
            seen = []
            for line in proc.stderr:
                seen.append(line)
                if f"block {after_block} done" in line:
                    proc.send_signal(signal_number)
                    break
            rest = proc.stderr.read()
            proc.wait(timeout=300)
        return proc.returncode, "".join(seen) + rest

    def test_interrupted_runs_resume_to_byte_identical_output(self):
        settings = ["--method", "sparsegpt", "--reconstruct", "optima", "--sparsity", "0.5", "--save-masks"]
        reference = os.path.join(self.work, "uninterrupted")
        self.assertExit(self.prune(reference, *settings), EXIT_OK)
        out = os.path.join(self.work, "resumed")
        state_dir = out + ".resume"
        # Activations mapped from disk in the interrupted runs (a 1-byte budget): the offload must not change a bit.
        offload = ["--activation-memory", "1"]

        code, message = self.interrupt(out, 0, signal.SIGTERM, *settings, *offload)
        self.assertEqual(code, 75, message)
        self.assertIn("stopped by SIGTERM", message)
        self.assertIn("--resume", message)
        self.assertFalse(os.path.exists(out), "nothing may appear under the output name")
        self.assertTrue(os.path.isfile(os.path.join(state_dir, "state.json")))
        with open(os.path.join(state_dir, "state.json")) as f:
            self.assertEqual(json.load(f)["next_block"], 1)

        # The state is neither reused silently nor discarded: without --resume, or with other settings or another
        # model, the run is refused and the state survives.
        self.assertExit(self.prune(out, *settings), EXIT_USAGE, state_dir, "--resume")
        other = ["--method", "sparsegpt", "--reconstruct", "optima", "--sparsity", "0.6", "--save-masks"]
        self.assertExit(self.prune(out, *other, "--resume"), EXIT_USAGE, "other settings", "sparsity 0.5 -> 0.6")
        self.assertExit(optima("prune", "--model", self.model, "--out", out, "--calib", self.calib, "--nsamples",
                               "16", "--seqlen", "128", "--seed", "3", *settings, "--resume"),
                        EXIT_USAGE, "seed 0 -> 3")
        edited = os.path.join(self.work, "edited-model")
        shutil.copytree(self.model, edited)
        with open(os.path.join(edited, "config.json")) as f:
            config = json.load(f)
        config["rms_norm_eps"] = config.get("rms_norm_eps", 1e-5) * 2
        with open(os.path.join(edited, "config.json"), "w") as f:
            json.dump(config, f)
        self.assertExit(optima("prune", "--model", edited, "--out", out, "--calib", self.calib, "--nsamples", "16",
                               "--seqlen", "128", *settings, "--resume"),
                        EXIT_USAGE, "another model")
        shutil.rmtree(edited)
        # A corrupt file of the state is named, and the run stops before using any of it.
        with open(os.path.join(state_dir, "state.json")) as f:
            activations = os.path.join(state_dir, json.load(f)["activations"])
        with open(activations, "r+b") as f:
            f.seek(-5, os.SEEK_END)
            original = f.read(1)
            f.seek(-5, os.SEEK_END)
            f.write(bytes([original[0] ^ 0xFF]))
        self.assertExit(self.prune(out, *settings, "--resume"), EXIT_INPUT, activations, "SHA-256")
        with open(activations, "r+b") as f:
            f.seek(-5, os.SEEK_END)
            f.write(original)
        self.assertTrue(os.path.isfile(os.path.join(state_dir, "state.json")))

        # Resumed, interrupted again (SIGINT this time), resumed to the end.
        code, message = self.interrupt(out, 2, signal.SIGINT, *settings, *offload, "--resume")
        self.assertEqual(code, 75, message)
        self.assertIn("continuing at block 1", message)
        with open(os.path.join(state_dir, "state.json")) as f:
            self.assertEqual(json.load(f)["next_block"], 3)
        result = self.prune(out, *settings, "--resume")
        self.assertExit(result, EXIT_OK, "continuing at block 3")
        self.assertFalse(os.path.exists(state_dir), "a completed run removes its work folder")

        # Byte-identical outputs; the reports differ only in timings, memory and the resume record.
        resumed_report, reference_report = assert_same_output(self, out, reference, "the uninterrupted run's")
        self.check_masks(reference, "unstructured")
        self.assertEqual(resumed_report["resumed_from_block"], 3)
        self.assertIsNone(reference_report["resumed_from_block"])
        self.assertEqual([f for f in os.listdir(self.work) if "resumed" in f], ["resumed"])

    def test_bad_settings_are_refused_and_leave_no_output(self):
        out = os.path.join(self.work, "refused")
        cases = [
            (["--sparsity", "0"], "sparsity"),
            (["--sparsity", "1"], "sparsity"),
            (["--sparsity", "1.5"], "sparsity"),
            (["--sparsity", "-0.1"], "sparsity"),
            (["--pattern", "4:4"], "4:4"),
            (["--pattern", "3:2"], "3:2"),
            (["--pattern", "2:4", "--sparsity", "0.6"], "0.6"),
            (["--pattern", "4:8"], "down_proj"),  # 172 inputs are not a multiple of 8
            (["--pattern", "two:four"], "two:four"),
            (["--method", "obs"], "obs"),
            (["--nsamples", "0"], "nsamples"),
            (["--reconstruct", "lbfgs"], "lbfgs"),
            (["--qp-solver", "pdhg"], "pdhg"),
            (["--qp-tol", "0"], "qp-tol"),
            (["--hessian-dtype", "fp16"], "fp16"),
        ]
        for args, fragment in cases:
            with self.subTest(args=args):
                self.assertExit(self.prune(out, *args), EXIT_USAGE, fragment)
                self.assertFalse(os.path.exists(out))
        self.assertExit(optima("prune", "--model", self.model, "--out", out, "--calib", self.calib, "--seqlen",
                               "4096"), EXIT_USAGE, "4096", "512 positions", "max_position_embeddings")
        self.assertExit(optima("prune", "--model", self.model, "--out", out, "--calib",
                               os.path.join(self.work, "no-such-file.txt"), "--method", "wanda"), EXIT_INPUT,
                        "no-such-file.txt")
        self.assertExit(optima("prune", "--model", self.model, "--out", out, "--config",
                               os.path.join(self.work, "no-such-config.toml")), EXIT_INPUT, "no-such-config.toml")
        self.assertFalse(os.path.exists(out))
        # An existing output is refused unless --overwrite; the input model is never a valid output.
        os.makedirs(out)
        self.assertExit(self.prune(out, "--method", "magnitude"), EXIT_USAGE, "--overwrite")
        self.assertExit(self.prune(self.model, "--method", "magnitude", "--overwrite"), EXIT_USAGE, "input model")
        self.assertEqual(read_checkpoint(self.model), self.dense)

    def test_config_file_and_dump_config(self):
        config = os.path.join(self.work, "prune.toml")
        with open(config, "w") as f:
            f.write('method = "wanda"\npattern = "2:4"\nnsamples = 8\n')
        result = optima("prune", "--config", config, "--model", self.model, "--out", os.path.join(self.work, "d"),
                        "--nsamples", "4", "--dump-config")
        self.assertExit(result, EXIT_OK)
        self.assertIn('method="wanda"', result.stdout.replace(" ", ""))
        self.assertIn("nsamples=4", result.stdout.replace(" ", ""))  # the command line wins over the file
        self.assertFalse(os.path.exists(os.path.join(self.work, "d")))
        # The file's settings are used; the default window length is capped at the model's 512 positions.
        out = os.path.join(self.work, "from-config")
        self.assertExit(optima("prune", "--config", config, "--model", self.model, "--out", out, "--calib",
                               self.calib, "--nsamples", "2"), EXIT_OK)
        report = self.check_pruned(out, "2:4", 0.5)
        self.assertEqual((report["settings"]["method"], report["settings"]["pattern"]), ("wanda", "2:4"))
        self.assertEqual((report["settings"]["nsamples"], report["settings"]["seqlen"]), (2, 512))


if __name__ == "__main__":
    OPTIMA = os.path.abspath(sys.argv[1])
    ASSETS = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared",
                                                                 "assets")
    unittest.main(argv=[sys.argv[0], "-v"])
