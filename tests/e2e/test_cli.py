#!/usr/bin/env python3
"""End-to-end tests of the optima command line: exit codes, messages, and outputs, run on real and random models.

Standard library only; ctest runs it as `cli` with the binary and the assets folder:
    python3 tests/e2e/test_cli.py OPTIMA_BINARY [ASSETS_DIR]
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import unittest

OPTIMA = None
ASSETS = None
# Exit codes, as include/optima/core/error.h defines them.
EXIT_OK, EXIT_USAGE, EXIT_INPUT = 0, 2, 3
GOLDEN_OPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "models", "opt")
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs")

# A value for every option of `optima prune` that differs from its default: (command-line value, the value the
# dumped TOML must hold; None for a flag). Strings carry what a TOML writer must quote or escape.
PRUNE_SETTINGS = {
    "--model": ("models/my model, v2 #1", "models/my model, v2 #1"),
    "--out": ("out/it's [1] = \"x\"", "out/it's [1] = \"x\""),
    "--sparsity": ("0.55,0.65", [0.55, 0.65]),
    "--pattern": ("2:4,4:8", ["2:4", "4:8"]),
    "--method": ("wanda,magnitude", ["wanda", "magnitude"]),
    "--masks": ("runs/other tool's [pruned] model", "runs/other tool's [pruned] model"),
    "--sparsity-allocation": ("uniform,owl", ["uniform", "owl"]),
    "--owl-lambda": ("0.05", 0.05),
    "--owl-threshold": ("7.5", 7.5),
    "--reconstruct": ("optima", "optima"),
    "--eval": ("C:\\data\\wiki.test.raw", "C:\\data\\wiki.test.raw"),
    "--eval-seqlen": ("256", 256),
    "--eval-max-windows": ("7", 7),
    "--calib": ("calib\twith tab.jsonl", "calib\twith tab.jsonl"),
    "--tokenizer": ("tokenizers/ünïcode", "tokenizers/ünïcode"),
    "--nsamples": ("16", 16),
    "--seqlen": ("256", 256),
    "--seed": ("18446744073709551615", 18446744073709551615),
    "--calib-rule": ("concatenated", "concatenated"),
    "--percdamp": ("0.02", 0.02),
    "--blocksize": ("64", 64),
    "--propagation": ("true-sequential", "true-sequential"),
    "--qp-damp": ("1e-08", 1e-08),
    "--qp-precision": ("fp64", "fp64"),
    "--qp-memory": ("2GiB", "2GiB"),
    "--qp-solver": ("iterative", "iterative"),
    "--qp-tol": ("1e-07", 1e-07),
    "--qp-max-iter": ("500", 500),
    "--hessian-dtype": ("fp64", "fp64"),
    "--device": ("cuda:1", "cuda:1"),
    "--dtype": ("bfloat16", "bfloat16"),
    "--batch-size": ("4", 4),
    "--skip": ("layers\\.(0|1)\\.", "layers\\.(0|1)\\."),
    "--max-shard-size": ("1000000", "1000000"),  # a string that looks like a number stays a string
    "--save-masks": (None, True),
    "--save-hessians": ("hess'ians\"dir", "hess'ians\"dir"),
    "--overwrite": (None, True),
    "--allow-non-finite": (None, True),
    "--dist-timeout": ("60.5", 60.5),
    "--resume": (None, True),
    "--activation-memory": ("8GiB", "8GiB"),
    "--threads": ("3", 3),
}


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

    def test_threads_and_openmp_wait_policy(self):
        """OpenMP threads sleep between regions after a short spin unless the user chose a policy (libgomp prints
        what it got under OMP_DISPLAY_ENV); a spin count the user set is kept; the log names the rule that chose the
        thread count."""
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
        run = lambda args, **extra: subprocess.run([OPTIMA, *args], capture_output=True, text=True, timeout=600,
                                                   env={**env, **extra})
        passive = run(["--version"], OMP_DISPLAY_ENV="VERBOSE")
        self.assertExit(passive, EXIT_OK, "GOMP_SPINCOUNT = '10000'", "OMP_WAIT_POLICY = 'PASSIVE'")
        own_spin = run(["--version"], OMP_DISPLAY_ENV="VERBOSE", GOMP_SPINCOUNT="0")
        self.assertExit(own_spin, EXIT_OK, "GOMP_SPINCOUNT = '0'", "OMP_WAIT_POLICY = 'PASSIVE'")
        active = run(["--version"], OMP_DISPLAY_ENV="VERBOSE", OMP_WAIT_POLICY="active")
        self.assertExit(active, EXIT_OK, "OMP_WAIT_POLICY = 'ACTIVE'")
        self.assertNotIn("GOMP_SPINCOUNT = '0'", active.stderr)
        model = GOLDEN_OPT
        self.assertExit(run(["inspect", model]), EXIT_OK, "thread", "OpenMP wait policy PASSIVE after 10000 spins")
        self.assertExit(run(["inspect", model, "--threads", "1"]), EXIT_OK, "1 thread (--threads 1)")
        self.assertExit(run(["inspect", model], OMP_NUM_THREADS="3"), EXIT_OK, "3 threads (OMP_NUM_THREADS=3")
        self.assertExit(run(["inspect", model, "--threads", "2"], OMP_NUM_THREADS="3"), EXIT_OK,
                        "2 threads (--threads 2)")
        self.assertExit(run(["inspect", model], OMP_WAIT_POLICY="active"), EXIT_OK, "active (OMP_WAIT_POLICY)")
        self.assertExit(run(["inspect", model, "--threads", "-1"]), EXIT_USAGE, "--threads")
        # A settings file may give it too.
        config = os.path.join(self.work, "threads.toml")
        with open(config, "w") as f:
            f.write("threads = 1\n")
        self.assertExit(run(["--config", config, "inspect", model]), EXIT_OK, "1 thread (--threads 1)")

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
        # Each layer's input site: q/k/v share the attention input, gate/up the MLP input.
        self.assertEqual([l["input"] for l in report["linears"][:7]],
                         ["attn_in", "attn_in", "attn_in", "attn_out", "mlp_in", "mlp_in", "mlp_hidden"])
        self.assertRegex(text.stdout, r"model\.layers\.0\.mlp\.down_proj .* mlp_hidden\n")

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
        # Past --activation-memory the windows' hidden states are mapped from a temporary file: same result, and the
        # file is gone afterwards.
        before = set(os.listdir(tempfile.gettempdir()))
        spilled = optima("eval", "--model", model, "--dataset", text, "--seqlen", "64", "--batch-size", "2",
                         "--activation-memory", "1KiB", "--json")
        self.assertExit(spilled, EXIT_OK)
        self.assertEqual(json.loads(spilled.stdout)["perplexity"], report["perplexity"])
        self.assertEqual([n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("optima-eval")], [])
        self.assertExit(optima("eval", "--model", model, "--dataset", text, "--activation-memory", "lots"), EXIT_USAGE,
                        "lots")
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


class ConfigFile(unittest.TestCase):
    """`--config FILE.toml` is checked as strictly as the command line, and --dump-config writes what it reads."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="optima-config-")
        self.work = self.tmp.name
        self.out = os.path.join(self.work, "pruned")

    def tearDown(self):
        self.tmp.cleanup()

    def write_config(self, text, name="settings.toml"):
        path = os.path.join(self.work, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def prune(self, config, *args):
        # magnitude needs no calibration data: without the checks, these runs would prune and write self.out.
        return optima("prune", "--config", config, "--model", GOLDEN_OPT, "--out", self.out, "--method", "magnitude",
                      *args)

    def assertUsageError(self, result, *fragments):
        self.assertEqual(result.returncode, EXIT_USAGE, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        self.assertTrue(result.stderr.startswith("optima: usage error: "), result.stderr)
        for fragment in fragments:
            self.assertIn(fragment, result.stderr)
        self.assertFalse(os.path.exists(self.out), "a refused config must not write anything")

    def dump(self, *args):
        result = optima("prune", *args, "--dump-config")
        self.assertEqual(result.returncode, EXIT_OK, result.stderr)
        return result.stdout

    def test_misspelt_key_is_refused_with_a_suggestion(self):
        config = self.write_config("sparsty = 0.6\n")
        self.assertUsageError(self.prune(config), f"{config}: key 'sparsty'", "did you mean 'sparsity'?")
        config = self.write_config("[prune]\neval_max_windows = 3\n")
        self.assertUsageError(self.prune(config), "key 'eval_max_windows' in [prune]", "did you mean 'eval-max-windows'?")
        self.assertUsageError(self.prune(self.write_config("[prun]\nsparsity = 0.6\n")), "section [prun]",
                              "did you mean [prune]?")
        # --help still answers.
        result = optima("prune", "--config", config, "--help")
        self.assertEqual(result.returncode, EXIT_OK, result.stderr)
        self.assertIn("--sparsity", result.stdout)
        # Every subcommand reads --config through the same checks.
        result = optima("eval", "--config", self.write_config("max-window = 3\n"), "--model", GOLDEN_OPT,
                        "--dataset", config)
        self.assertUsageError(result, "key 'max-window'", "did you mean 'max-windows'?")
        result = optima("--config", self.write_config("presett = 'opt-tiny'\n"), "make-random", "--out", self.out)
        self.assertUsageError(result, "key 'presett'", "did you mean 'preset'?")

    def test_key_of_another_subcommand_is_refused(self):
        config = self.write_config("max-windows = 3\n")
        self.assertUsageError(self.prune(config), f"{config}: key 'max-windows'", "a setting of optima eval",
                              "not of optima prune", "did you mean 'eval-max-windows'?")
        result = optima("eval", "--config", self.write_config("sparsity = 0.6\n"), "--model", GOLDEN_OPT,
                        "--dataset", config)
        self.assertUsageError(result, "key 'sparsity'", "a setting of optima prune, not of optima eval")
        # optima's own setting goes above the sections; a command-line-only flag is not a setting.
        self.assertUsageError(self.prune(self.write_config("[prune]\nlog-level = 'debug'\n")),
                              "key 'log-level' in [prune]", "a setting of optima itself")
        self.assertUsageError(self.prune(self.write_config("dump-config = true\n")), "key 'dump-config'",
                              "command line only")
        # Another subcommand's section is not used by prune, but it is checked.
        self.assertUsageError(self.prune(self.write_config("[eval]\nmax-windowz = 3\n")),
                              "key 'max-windowz' in [eval]", "did you mean 'max-windows'?")

    def test_value_of_the_wrong_type_is_refused(self):
        cases = [
            ('sparsity = "high"', "key 'sparsity'", 'found the string "high"'),
            ("nsamples = 1.5", "key 'nsamples'", "expected an integer, found the float 1.5"),
            ("nsamples = [128, 256]", "key 'nsamples'", "found a list of 2 values"),
            ("sparsity = 0.5\nseed = [0]", "key 'seed'", "found a list of 1 value"),
            ('save-masks = "true"', "key 'save-masks'", "expected true or false"),
            ("seed = -1", "key 'seed'", "out of range"),
            ("device = 0", "key 'device'", "expected a string, found the integer 0"),
            ("method = []", "key 'method'", "an empty list"),
            ("sparsity = high", "line 1: key 'sparsity'", "not a value"),
            ("sparsity = 0.5\nsparsity = 0.6", "key 'sparsity'", "set twice"),
            ("dist-timeout = -5", "key 'dist-timeout'", "-5"),
        ]
        for line, *fragments in cases:
            with self.subTest(line=line):
                config = self.write_config(line + "\n")
                self.assertUsageError(self.prune(config), config, *fragments)

    def test_valid_config_still_works(self):
        config = self.write_config(
            "# a sweep\nlog-level = 'warn'  # optima's own\nmethod = [\"wanda\",\n  \"sparsegpt\", # two\n]\n"
            "sparsity = [0.5, 0.6]\nnsamples = 0x40\nskip = 'layers\\.0\\.'\nsave-masks = true\n"
            "[prune]\nseqlen = 1_024\n[eval]\nmax-windows = 3\n")
        dumped = tomllib.loads(self.dump("--config", config, "--model", "m", "--out", "o", "--nsamples", "32"))
        self.assertEqual(dumped["method"], ["wanda", "sparsegpt"])
        self.assertEqual(dumped["sparsity"], [0.5, 0.6])
        self.assertEqual(dumped["nsamples"], 32)  # the command line wins
        self.assertEqual(dumped["skip"], "layers\\.0\\.")
        self.assertEqual((dumped["save-masks"], dumped["seqlen"]), (True, 1024))
        self.assertNotIn("max-windows", dumped)
        # The ready configs are valid and read as written.
        for name in sorted(f for f in os.listdir(CONFIGS) if f.endswith(".toml")):
            with self.subTest(config=name), open(os.path.join(CONFIGS, name), "rb") as f:
                wanted = tomllib.load(f)
                dumped = tomllib.loads(self.dump("--config", os.path.join(CONFIGS, name), "--model", "x", "--out", "y"))
                self.assertEqual({key: dumped.get(key) for key in wanted}, wanted)

    def test_every_prune_option_survives_dump_and_read_back(self):
        help_text = optima("prune", "--help").stdout
        options = set(re.findall(r"^\s+(?:-\w,)?(--[a-z][a-z0-9-]*)", help_text, re.MULTILINE))
        self.assertIn("--sparsity", options)
        missing = options - {"--help", "--dump-config"} - PRUNE_SETTINGS.keys()
        self.assertFalse(missing, f"give these options a non-default value in PRUNE_SETTINGS: {sorted(missing)}")
        args = []
        for option, (value, _) in PRUNE_SETTINGS.items():
            args += [option] if value is None else [option, value]
        first = self.dump(*args)
        defaults = tomllib.loads(self.dump("--model", "m", "--out", "o"))
        values = tomllib.loads(first)
        for option, (_, wanted) in PRUNE_SETTINGS.items():
            key = option[2:]
            with self.subTest(option=option):
                self.assertEqual(values.get(key), wanted)
                self.assertNotEqual(defaults.get(key), wanted)
        config = self.write_config(first, "dumped.toml")
        self.assertEqual(self.dump("--config", config), first)


if __name__ == "__main__":
    OPTIMA = os.path.abspath(sys.argv[1])
    ASSETS = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared",
                                                                 "assets")
    unittest.main(argv=[sys.argv[0], "-v"])
