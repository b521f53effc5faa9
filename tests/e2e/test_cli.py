#!/usr/bin/env python3
"""End-to-end tests of the optima command line: exit codes, messages, and outputs, run on real and random models.

Standard library only; ctest runs it as `cli` with the binary and the assets folder:
    python3 tests/e2e/test_cli.py OPTIMA_BINARY [ASSETS_DIR]
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

OPTIMA = None
ASSETS = None
# Exit codes, as include/optima/core/error.h defines them.
EXIT_OK, EXIT_USAGE, EXIT_INPUT = 0, 2, 3


def optima(*args):
    return subprocess.run([OPTIMA, *args], capture_output=True, text=True, timeout=600)


class Cli(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="optima-cli-")
        self.work = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def assertExit(self, result, code, *fragments):
        self.assertEqual(result.returncode, code, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        for fragment in fragments:
            self.assertIn(fragment, result.stderr + result.stdout)

    def test_version_and_help(self):
        self.assertExit(optima("--version"), EXIT_OK, "optima 0.1.0", "LibTorch")
        result = optima("--help")
        self.assertExit(result, EXIT_OK, "inspect", "convert", "make-random")

    def test_usage_errors_exit_2(self):
        self.assertExit(optima(), EXIT_USAGE, "subcommand")
        self.assertExit(optima("inspect"), EXIT_USAGE, "model")
        self.assertExit(optima("inspect", "x", "--bogus"), EXIT_USAGE, "--bogus")
        self.assertExit(optima("--log-level", "chatty", "inspect", self.work), EXIT_USAGE, "chatty")
        self.assertExit(optima("make-random", "--preset", "gpt5", "--out", os.path.join(self.work, "m")), EXIT_USAGE,
                        "gpt5")
        self.assertExit(optima("make-random", "--preset", "opt-tiny", "--out", os.path.join(self.work, "m"),
                               "--max-shard-size", "12 parsecs"), EXIT_USAGE, "12 parsecs")

    def test_input_errors_exit_3_and_name_the_path(self):
        missing = os.path.join(self.work, "no-such-model")
        self.assertExit(optima("inspect", missing), EXIT_INPUT, missing, "does not exist")
        self.assertExit(optima("inspect", self.work), EXIT_INPUT, "no config.json")
        with open(os.path.join(self.work, "config.json"), "w") as f:
            f.write('{"model_type": "opt", "hidden_size": }')
        self.assertExit(optima("inspect", self.work), EXIT_INPUT, "config.json", "malformed JSON")

    def test_inspect_stories260k(self):
        model = os.path.join(ASSETS, "models", "stories260k")
        if not os.path.isdir(model):
            self.skipTest(f"asset missing: {model}")
        text = optima("inspect", model)
        self.assertExit(text, EXIT_OK, "parameters   260032", "prunable linear layers: 35")
        report = json.loads(optima("inspect", model, "--json").stdout)
        self.assertEqual(report["parameters"], 260032)
        self.assertEqual(report["prunable_linears"], 35)
        self.assertEqual(report["linears"][0]["name"], "model.layers.0.self_attn.q_proj")

    def test_tokenize_and_eval(self):
        model = os.path.join(ASSETS, "models", "stories260k")
        if not os.path.isdir(model):
            self.skipTest(f"asset missing: {model}")
        result = optima("tokenize", "--model", model, "--text", "Once upon a time", "--json")
        self.assertExit(result, EXIT_OK)
        self.assertEqual(json.loads(result.stdout)["ids"], [1, 403, 407, 261, 378])
        text = os.path.join(self.work, "eval.txt")
        with open(text, "w") as f:
            f.write("Once upon a time, there was a little girl named Lily.\r\n\r\nShe liked to play outside.\n" * 20)
        result = optima("eval", "--model", model, "--dataset", text, "--seqlen", "64", "--json")
        self.assertExit(result, EXIT_OK)
        report = json.loads(result.stdout)
        self.assertEqual(report["seqlen"], 64)
        self.assertGreater(report["windows"], 3)
        self.assertLess(report["perplexity"], 20)  # repeated in-domain text: a trained model predicts it well
        # A tokenizer that does not fit the model is an input error, not a crash.
        golden = os.path.join(os.path.dirname(__file__), "..", "data", "models", "opt")
        opt_tokenizer = os.path.join(ASSETS, "tokenizers", "opt")
        self.assertExit(optima("eval", "--model", golden, "--dataset", text, "--seqlen", "16", "--tokenizer",
                               opt_tokenizer), EXIT_INPUT, "vocabulary")

    def test_outputs_are_all_or_nothing(self):
        out = os.path.join(self.work, "tiny")
        self.assertExit(optima("make-random", "--preset", "opt-tiny", "--out", out, "--max-shard-size", "4MB"), EXIT_OK)
        shards = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
        self.assertGreater(len(shards), 1)
        # An existing output is refused unless --overwrite; the input is never a valid output.
        self.assertExit(optima("make-random", "--preset", "opt-tiny", "--out", out), EXIT_USAGE, "--overwrite")
        self.assertExit(optima("convert", "--model", out, "--out", out, "--overwrite"), EXIT_USAGE, "input model")
        self.assertExit(optima("make-random", "--preset", "llama-tiny", "--out", out, "--overwrite",
                               "--max-shard-size", "4MB"), EXIT_OK)
        # A checkpoint broken mid-way fails with a clear error and leaves nothing under the output name.
        os.remove(os.path.join(out, sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))[-1]))
        converted = os.path.join(self.work, "converted")
        self.assertExit(optima("convert", "--model", out, "--out", converted), EXIT_INPUT, "missing")
        self.assertFalse(os.path.exists(converted))
        self.assertEqual([f for f in os.listdir(self.work) if "partial" in f], [])


if __name__ == "__main__":
    OPTIMA = os.path.abspath(sys.argv[1])
    ASSETS = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared",
                                                                 "assets")
    unittest.main(argv=[sys.argv[0], "-v"])
