#!/usr/bin/env python3
"""End-to-end tests of `optima check` (CI regression runs) and of the calibration rule a run records: every exit path
of check (ok, regressed, incomparable, bad input), its JUnit output, the bit-identity of repeated reports, and the
calibration rule's log line and report field. Runs on the small trained OPT model of the assets with few
calibration windows, so it stays fast.

Standard library only; ctest runs it as `check` with the binary and the assets folder:
    python3 tests/e2e/test_check.py OPTIMA_BINARY [ASSETS_DIR]
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

OPTIMA = None
ASSETS = None
EXIT_OK, EXIT_REGRESSED, EXIT_INCOMPARABLE, EXIT_USAGE, EXIT_INPUT = 0, 1, 2, 2, 3
# Fields of a report that may differ between two runs of the same settings: wall times and memory.
VOLATILE = {"timings", "peak_rss_bytes", "seconds_select", "seconds_reconstruct", "out"}


def optima(*args):
    return subprocess.run([OPTIMA, *args], capture_output=True, text=True, timeout=600)


def strip_volatile(value):
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


class Check(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = os.path.join(ASSETS, "models", "opt-small")
        cls.stories = os.path.join(ASSETS, "text", "tinystories", "tiny.utf8")
        if not os.path.isdir(cls.model) or not os.path.isfile(cls.stories):
            raise unittest.SkipTest(f"asset missing: {cls.model} or {cls.stories}")
        cls.tmp = tempfile.TemporaryDirectory(prefix="optima-check-")
        cls.work = cls.tmp.name
        with open(cls.stories, encoding="utf-8") as f:
            rows = f.read().splitlines()
        cls.calib = os.path.join(cls.work, "calib.txt")
        with open(cls.calib, "w", encoding="utf-8") as f:
            f.write("\n".join(rows[:1500]) + "\n")
        cls.eval_text = os.path.join(cls.work, "heldout.txt")
        with open(cls.eval_text, "w", encoding="utf-8") as f:
            f.write("\n".join(rows[-120:]) + "\n")
        cls.base = cls.prune("base")
        cls.baseline = os.path.join(cls.work, "baseline.json")
        result = optima("check", "--write-baseline", "--baseline", cls.baseline, cls.base)
        if result.returncode != EXIT_OK:
            raise AssertionError(f"--write-baseline failed:\n{result.stdout}\n{result.stderr}")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def prune(cls, name, *extra, sparsity="0.5", method="sparsegpt"):
        out = os.path.join(cls.work, name)
        result = optima("prune", "--model", cls.model, "--out", out, "--calib", cls.calib, "--nsamples", "4",
                        "--seqlen", "128", "--method", method, "--sparsity", sparsity, "--eval", cls.eval_text,
                        "--eval-seqlen", "128", "--eval-max-windows", "4", *extra)
        if result.returncode != EXIT_OK:
            raise AssertionError(f"prune {name} failed ({result.returncode}):\n{result.stderr}")
        cls.logs = getattr(cls, "logs", {})
        cls.logs[name] = result.stderr
        return out

    def check(self, run, *args, baseline=None):
        return optima("check", "--baseline", baseline or self.baseline, run, *args)

    def assertExit(self, result, code, *fragments):
        self.assertEqual(result.returncode, code, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        for fragment in fragments:
            self.assertIn(fragment, result.stdout + result.stderr)

    def test_same_settings_give_the_same_report_and_pass(self):
        again = self.prune("again")
        with open(os.path.join(self.base, "prune_report.json")) as f:
            first = json.load(f)
        with open(os.path.join(again, "prune_report.json")) as f:
            second = json.load(f)
        self.assertEqual(strip_volatile(first), strip_volatile(second))
        with open(os.path.join(again, "eval.json")) as f:
            self.assertIn("perplexity", json.load(f))
        junit = os.path.join(self.work, "same.xml")
        result = self.check(again, "--junit", junit)
        self.assertExit(result, EXIT_OK, "0 regressed: ok")
        suite = ET.parse(junit).getroot().find("testsuite")
        self.assertEqual(suite.get("failures"), "0")
        self.assertGreater(int(suite.get("tests")), 4 * 6 * 4)  # 4 blocks x 6 layers x 4 metrics, and more
        # A different method is another setting: incomparable, named (the report edited, not pruned again: fast).
        edited = os.path.join(self.work, "edited")
        os.makedirs(edited)
        with open(os.path.join(edited, "prune_report.json"), "w") as f:
            json.dump({**first, "settings": {**first["settings"], "method": "wanda"}}, f)
        self.assertExit(self.check(edited, "--junit", junit), EXIT_INCOMPARABLE, "setting method: baseline sparsegpt, "
                        "run wanda", "'perplexity' is in the baseline but not in the run")
        suite = ET.parse(junit).getroot().find("testsuite")
        self.assertEqual((suite.get("tests"), suite.get("failures")), ("1", "1"))
        # The report file itself may be named, and time may be checked when asked (generously here).
        self.assertExit(self.check(os.path.join(again, "prune_report.json"), "--tolerance", "time=100"), EXIT_OK)

    def test_higher_sparsity_is_a_regression(self):
        worse = self.prune("worse", sparsity="0.6")
        junit = os.path.join(self.work, "worse.xml")
        result = self.check(worse, "--junit", junit)
        self.assertExit(result, EXIT_REGRESSED, "overall_sparsity", "regressed", "perplexity")
        suite = ET.parse(junit).getroot().find("testsuite")
        self.assertGreater(int(suite.get("failures")), 0)
        failed = [case.get("name") for case in suite if case.find("failure") is not None]
        self.assertIn("perplexity", failed)
        self.assertIn("overall_sparsity", failed)
        # A generous tolerance lets the same run pass: the verdict follows the tolerances.
        self.assertExit(self.check(worse, "--tolerance", "sparsity=0.5", "--tolerance", "error=10",
                                   "--tolerance", "perplexity=10"), EXIT_OK)

    def test_bad_input(self):
        self.assertExit(self.check(os.path.join(self.work, "absent")), EXIT_INPUT, "absent", "does not exist")
        self.assertExit(self.check(self.base, baseline=os.path.join(self.work, "none.json")), EXIT_INPUT,
                        "none.json", "--write-baseline")
        broken = os.path.join(self.work, "broken.json")
        with open(broken, "w") as f:
            f.write('{"format": "optima-check-baseline", "version": 1, ')
        self.assertExit(self.check(self.base, baseline=broken), EXIT_INPUT, "broken.json")
        other = os.path.join(self.work, "other.json")
        with open(other, "w") as f:
            json.dump({"layers": []}, f)
        self.assertExit(self.check(self.base, baseline=other), EXIT_INPUT, "other.json", "not a baseline")
        self.assertExit(self.check(self.base, "--tolerance", "latency=0.1"), EXIT_USAGE, "unknown metric kind")
        self.assertExit(self.check(self.work), EXIT_INPUT, "prune_report.json or sweep.json")
        self.assertExit(optima("check", self.base), EXIT_USAGE, "--baseline")

    def test_calibration_rule_is_logged_and_reported(self):
        # 1500 TinyStories lines, 128-token windows: few stories are that long, so auto joins them.
        with open(os.path.join(self.base, "prune_report.json")) as f:
            sampling = json.load(f)["calibration_sampling"]
        self.assertEqual((sampling["requested_rule"], sampling["rule"]), ("auto", "concatenated"))
        self.assertLess(sampling["qualifying_documents"], 4)
        self.assertIn("calibration rule concatenated: auto: only", self.logs["base"])
        # The reference rule asked for by name runs, with a warning that gives the numbers.
        reference = self.prune("reference", "--calib-rule", "reference")
        with open(os.path.join(reference, "prune_report.json")) as f:
            report = json.load(f)
        self.assertEqual(report["calibration_sampling"]["rule"], "reference")
        self.assertEqual(report["settings"]["calib_rule"], "reference")
        q, n = sampling["qualifying_documents"], sampling["documents"]
        self.assertIn(f"only {q} of {n} documents", self.logs["reference"])
        self.assertIn("fewer than the 4 windows asked for", self.logs["reference"])
        self.assertIn("warning: calibration: only", self.logs["reference"])
        # Another rule is another calibration set (and another setting): incomparable, and both are named.
        self.assertExit(self.check(reference), EXIT_INCOMPARABLE, "incomparable",
                        "setting calib_rule: baseline auto, run reference", "calibration: other calibration tokens")

    def test_sweep_against_its_baseline(self):
        out = os.path.join(self.work, "sweep")
        result = optima("prune", "--model", self.model, "--out", out, "--calib", self.calib, "--nsamples", "2",
                        "--seqlen", "64", "--method", "magnitude", "--sparsity", "0.5,0.6")
        self.assertExit(result, EXIT_OK)
        baseline = os.path.join(self.work, "sweep-baseline.json")
        self.assertExit(optima("check", "--write-baseline", "--baseline", baseline, out), EXIT_OK)
        self.assertExit(self.check(os.path.join(out, "sweep.json"), baseline=baseline), EXIT_OK)
        # A single run is not comparable with a sweep; a sweep with another calibration set is not either.
        self.assertExit(self.check(self.base, baseline=baseline), EXIT_INCOMPARABLE, "the baseline is a sweep")
        other = os.path.join(self.work, "sweep-seed")
        self.assertExit(optima("prune", "--model", self.model, "--out", other, "--calib", self.calib, "--nsamples",
                               "2", "--seqlen", "64", "--method", "magnitude", "--sparsity", "0.5,0.6", "--seed", "5"),
                        EXIT_OK)
        self.assertExit(self.check(other, baseline=baseline), EXIT_INCOMPARABLE, "fingerprint")


class EvalRows(unittest.TestCase):
    """`optima eval` reads JSON Lines rows as given (empty ones kept) and plain lines without the empty ones."""

    def test_jsonl_keeps_empty_rows(self):
        model = os.path.join(ASSETS, "models", "opt-small")
        if not os.path.isdir(model):
            self.skipTest(f"asset missing: {model}")
        with tempfile.TemporaryDirectory(prefix="optima-eval-rows-") as work:
            rows = ["Once upon a time there was a cat.", "", "", "The cat sat on the mat.\n", ""] * 12
            jsonl, text = os.path.join(work, "rows.jsonl"), os.path.join(work, "rows.txt")
            with open(jsonl, "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"text": r}) + "\n" for r in rows)
            with open(text, "w", encoding="utf-8") as f:
                f.write("\n".join(r.rstrip("\n") for r in rows) + "\n")

            def tokens(*args):
                result = optima("eval", "--model", model, "--seqlen", "16", "--json", *args)
                self.assertEqual(result.returncode, EXIT_OK, result.stderr)
                return json.loads(result.stdout)["tokens"]

            # "\n\n".join(rows) of the JSON Lines rows, tokenized here by optima on a file of exactly that text.
            joined = os.path.join(work, "joined.txt")
            with open(joined, "w", encoding="utf-8") as f:
                f.write("\n\n".join(rows))
            want = len(json.loads(optima("tokenize", "--model", model, "--file", joined, "--json").stdout)["ids"])
            self.assertEqual(tokens("--dataset", jsonl), want)
            self.assertEqual(tokens("--dataset", jsonl, "--text-format", "jsonl"), want)
            # Plain lines drop the empty rows: fewer tokens.
            self.assertLess(tokens("--dataset", text), want)
            with open(os.path.join(work, "bad.jsonl"), "w") as f:
                f.write('{"text": "a"}\n{"body": 1}\n')
            result = optima("eval", "--model", model, "--dataset", os.path.join(work, "bad.jsonl"))
            self.assertEqual(result.returncode, EXIT_INPUT, result.stderr)
            self.assertIn("bad.jsonl: line 2", result.stderr)
            result = optima("eval", "--model", model, "--dataset", jsonl, "--text-format", "xml")
            self.assertEqual(result.returncode, EXIT_USAGE, result.stderr)
            self.assertIn("auto, lines or jsonl", result.stderr)


if __name__ == "__main__":
    OPTIMA = os.path.abspath(sys.argv[1])
    ASSETS = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared",
                                                                 "assets")
    unittest.main(argv=[sys.argv[0], "-v"])
