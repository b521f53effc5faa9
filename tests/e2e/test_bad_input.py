#!/usr/bin/env python3
"""End-to-end tests of bad input to `optima prune` (and eval): broken model directories and safetensors files, weights
and activations with NaN or Inf, bad calibration files and tokenizers, and output locations that are taken, read-only
or full. Each must end in the documented exit code with a message naming the file and the key or tensor, leave
nothing under the output name and no staging directory behind, and leave the input model byte for byte unchanged.
Singular Hessians (dead and duplicated inputs, fewer calibration tokens than inputs) must still prune to finite
weights of the requested sparsity, with the damping in the report.

Standard library only; ctest runs it as `bad_input` with the binary and the assets folder:
    python3 tests/e2e/test_bad_input.py OPTIMA_BINARY [ASSETS_DIR]
Cases that need the stories260k tokenizer skip without the assets; the read-only and full-disk cases mount a small
tmpfs and skip where mounting is not permitted (not root).
"""
import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

from safetensors_file import edit as edit_tensors, edit_floats, floats, read_checkpoint

OPTIMA = None
ASSETS = None
# Exit codes, as include/optima/core/error.h defines them.
EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_IO, EXIT_NUMERIC = 0, 2, 3, 4, 5
# A small LLaMA (2 blocks, 64 wide, 128-wide MLP, 512 tokens): big enough for every code path, a few hundred KB.
TINY_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": 64,
               "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
               "max_position_embeddings": 256, "vocab_size": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
               "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
LLAMA_LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj"]
DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "I32": 4, "U8": 1}


def optima(*args, timeout=300):
    return subprocess.run([OPTIMA, *args], capture_output=True, text=True, timeout=timeout)


# These models are tiny: one thread each, so that OpenMP does not spin against the other tests of a busy machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def tree_digest(directory):
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, directory).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


class BadInputCase(unittest.TestCase):
    """A tiny random model (with the stories260k tokenizer when the assets are there) and the checks every case
    shares."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="optima-bad-input-")
        cls.work = cls.tmp.name
        cls.stories = os.path.join(ASSETS, "models", "stories260k")
        cls.has_tokenizer = os.path.isfile(os.path.join(cls.stories, "tokenizer.model"))
        config = os.path.join(cls.work, "tiny-config.json")
        with open(config, "w") as f:
            json.dump(TINY_CONFIG, f)
        cls.base = os.path.join(cls.work, "base")
        extra = ["--tokenizer", cls.stories] if cls.has_tokenizer else []
        result = optima("make-random", "--config", config, "--out", cls.base, "--seed", "3", *extra)
        assert result.returncode == 0, result.stderr
        cls.calib = os.path.join(cls.work, "calib.txt")
        with open(cls.calib, "w") as f:
            for i in range(40):
                f.write(f"Once upon a time there was a little girl named Lily number {i}. She liked to play in the "
                        f"park with her dog, and every day they found something new to look at.\n")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def setUp(self):
        self.case = tempfile.mkdtemp(dir=self.work)
        self.out = os.path.join(self.case, "out")

    def copy_model(self, source=None):
        model = os.path.join(self.case, "model")
        shutil.copytree(source or self.base, model)
        return model

    def need_tokenizer(self):
        if not self.has_tokenizer:
            self.skipTest(f"asset missing: {self.stories}")

    def prune(self, model, *extra, out=None):
        args = ["prune", "--model", model, "--out", out or self.out]
        if "--method" not in extra:
            args += ["--method", "magnitude"]
        return optima(*args, *extra)

    def assertRefused(self, result, code, *fragments, model=None, digest=None, out=None):
        """Exit `code`, every fragment in the message, no traceback or signal, nothing under the output name, no
        staging directory beside it, and the input model unchanged."""
        out = out or self.out
        message = result.stderr + result.stdout
        self.assertEqual(result.returncode, code, message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertFalse(os.path.exists(out), f"{out} must not exist after a failed run")
        parent = os.path.dirname(out)
        if os.path.isdir(parent):
            leftovers = [f for f in os.listdir(parent) if ".partial" in f or f.startswith("." + os.path.basename(out))]
            self.assertEqual(leftovers, [], "staging left behind")
        if model is not None and digest is not None:
            self.assertEqual(tree_digest(model), digest, "the input model was modified")


class ModelDirectory(BadInputCase):
    def test_missing_empty_configless_and_weightless(self):
        missing = os.path.join(self.case, "no-such-model")
        self.assertRefused(self.prune(missing), EXIT_INPUT, missing, "does not exist")
        empty = os.path.join(self.case, "empty")
        os.makedirs(empty)
        self.assertRefused(self.prune(empty), EXIT_INPUT, empty, "no config.json", "found an empty directory")
        model = self.copy_model()
        os.remove(os.path.join(model, "config.json"))
        self.assertRefused(self.prune(model), EXIT_INPUT, model, "no config.json", "found no config.json")
        weightless = os.path.join(self.case, "weightless")
        os.makedirs(weightless)
        shutil.copy(os.path.join(self.base, "config.json"), weightless)
        self.assertRefused(self.prune(weightless), EXIT_INPUT, weightless, "no weights found", "model.safetensors")
        file_not_dir = os.path.join(self.case, "a-file")
        open(file_not_dir, "w").close()
        self.assertRefused(self.prune(file_not_dir), EXIT_INPUT, file_not_dir, "not a directory")

    def test_config_errors_name_the_key(self):
        cases = [
            ("malformed", lambda c: '{"model_type": "llama", "hidden_size": }', ["malformed JSON"]),
            ("not-an-object", lambda c: "[1, 2, 3]", ["config is not a JSON object", "found array"]),
            ("unknown-type", lambda c: dict(c, model_type="gpt_neox"),
             ["key 'model_type'", "unsupported model type", "expected one of opt, llama", "found gpt_neox"]),
            ("no-type", lambda c: {k: v for k, v in c.items() if k != "model_type"},
             ["key 'model_type'", "required key is missing"]),
            ("missing-key", lambda c: {k: v for k, v in c.items() if k != "hidden_size"},
             ["key 'hidden_size'", "required key is missing"]),
            ("wrong-type", lambda c: dict(c, hidden_size="64"),
             ["key 'hidden_size'", "wrong type", "expected an integer", 'found string "64"']),
            ("wrong-type-float", lambda c: dict(c, num_hidden_layers=2.5),
             ["key 'num_hidden_layers'", "expected an integer", "found number 2.5"]),
            ("negative", lambda c: dict(c, intermediate_size=-1),
             ["key 'intermediate_size'", "must be positive", "found -1"]),
            ("bad-heads", lambda c: dict(c, num_key_value_heads=3),
             ["key 'num_key_value_heads'", "must divide num_attention_heads", "found 3"]),
        ]
        for tag, change, fragments in cases:
            with self.subTest(tag):
                model = self.copy_model()
                config = os.path.join(model, "config.json")
                with open(config) as f:
                    changed = change(json.load(f))
                with open(config, "w") as f:
                    f.write(changed if isinstance(changed, str) else json.dumps(changed))
                digest = tree_digest(model)
                self.assertRefused(self.prune(model), EXIT_INPUT, config, *fragments, model=model, digest=digest)
                if tag == "unknown-type":  # inspect reads configs the same way
                    self.assertRefused(optima("inspect", model), EXIT_INPUT, config, *fragments)
                shutil.rmtree(model)

    def test_unknown_rotary_scaling_names_key_and_value(self):
        """Qwen3 and Phi-3 models whose rope_scaling type optima does not implement: exit 3 naming the file, the key
        and the value, from prune and inspect alike, and make-random refuses such a config before writing."""
        qwen3 = dict(TINY_CONFIG, architectures=["Qwen3ForCausalLM"], model_type="qwen3", head_dim=32)
        phi3 = dict(TINY_CONFIG, architectures=["Phi3ForCausalLM"], model_type="phi3", partial_rotary_factor=0.5,
                    original_max_position_embeddings=64)
        cases = [("qwen3", qwen3, {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
                  ["key 'rope_scaling'.rope_type", "unsupported rotary scaling", "found yarn"]),
                 ("phi3", phi3, {"rope_scaling": {"type": "dynamic", "factor": 2.0}},
                  ["key 'rope_scaling'.type", "unsupported rotary scaling", "found dynamic"]),
                 ("phi3-parameters", phi3, {"rope_parameters": {"rope_type": "ntk", "rope_theta": 10000.0}},
                  ["key 'rope_parameters'.rope_type", "found ntk"])]
        for tag, good, bad, fragments in cases:
            with self.subTest(tag):
                config = os.path.join(self.case, f"{tag}.json")
                with open(config, "w") as f:
                    json.dump(good, f)
                model = os.path.join(self.case, tag)
                result = optima("make-random", "--config", config, "--out", model, "--seed", "1")
                self.assertEqual(result.returncode, EXIT_OK, result.stderr)
                with open(config, "w") as f:
                    json.dump(dict(good, **bad), f)
                shutil.copy(config, os.path.join(model, "config.json"))
                digest = tree_digest(model)
                self.assertRefused(self.prune(model, "--calib", self.calib), EXIT_INPUT,
                                   os.path.join(model, "config.json"), *fragments, model=model, digest=digest)
                self.assertRefused(optima("inspect", model), EXIT_INPUT, *fragments)
                refused = os.path.join(self.case, f"{tag}-random")
                self.assertRefused(optima("make-random", "--config", config, "--out", refused), EXIT_INPUT,
                                   *fragments, out=refused)
    def test_gemma_features_that_cannot_be_computed_are_refused(self):
        gemma = dict(TINY_CONFIG, model_type="gemma3_text", head_dim=16, sliding_window=8)
        cases = [
            ("rope-type", dict(gemma, rope_scaling={"rope_type": "yarn", "factor": 8.0}),
             ["key 'rope_scaling'.rope_type", "unsupported rotary scaling", "found yarn"]),
            ("rope-type-per-layer", dict(gemma, rope_parameters={"full_attention": {"rope_type": "dynamic"},
                                                                 "sliding_attention": {"rope_type": "default"}}),
             ["key 'rope_parameters'.full_attention.rope_type", "found dynamic"]),
            # Multimodal Gemma 3: its text model's keys belong in text_config, where errors are named.
            ("vision-no-text-config", dict(gemma, model_type="gemma3",
                                           vision_config={"model_type": "siglip_vision_model"}),
             ["key 'text_config'", "text model's config", "found no such key"]),
            ("vision-text-rope-type", {"model_type": "gemma3", "vision_config": {"model_type": "siglip_vision_model"},
                                       "text_config": dict(gemma, rope_scaling={"rope_type": "yarn", "factor": 8.0})},
             ["config.json text_config: key 'rope_scaling'.rope_type", "found yarn"]),
            ("gemma2-rope-type", dict(gemma, model_type="gemma2", rope_parameters={"rope_type": "longrope"}),
             ["key 'rope_parameters'.rope_type", "found longrope"]),
        ]
        for tag, changed, fragments in cases:
            with self.subTest(tag):
                model = self.copy_model()
                config = os.path.join(model, "config.json")
                with open(config, "w") as f:
                    json.dump(changed, f)
                digest = tree_digest(model)
                self.assertRefused(self.prune(model), EXIT_INPUT, config, *fragments, model=model, digest=digest)
                self.assertRefused(optima("inspect", model), EXIT_INPUT, config, *fragments)
                shutil.rmtree(model)
        # A computable multimodal config over a checkpoint without the language model's tensors.
        model = self.copy_model()
        with open(os.path.join(model, "config.json"), "w") as f:
            json.dump({"model_type": "gemma3", "text_config": gemma,
                       "vision_config": {"model_type": "siglip_vision_model"}}, f)
        digest = tree_digest(model)
        self.assertRefused(self.prune(model), EXIT_INPUT, model,
                           "tensor 'language_model.model.embed_tokens.weight' is missing", model=model, digest=digest)

    def test_tensor_missing_or_of_the_wrong_shape(self):
        model = self.copy_model()
        weights = os.path.join(model, "model.safetensors")
        missing = "model.layers.1.mlp.up_proj.weight"
        edit_tensors(weights, lambda ts: ts.remove(next(t for t in ts if t.name == missing)))
        digest = tree_digest(model)
        self.assertRefused(self.prune(model), EXIT_INPUT, model, f"tensor '{missing}' is missing",
                           "expected shape [128, 64]", "found no such tensor", model=model, digest=digest)
        shutil.rmtree(model)
        # The config says a 96-wide MLP; the weights are 128 wide.
        model = self.copy_model()
        config = os.path.join(model, "config.json")
        with open(config) as f:
            changed = dict(json.load(f), intermediate_size=96)
        with open(config, "w") as f:
            json.dump(changed, f)
        digest = tree_digest(model)
        self.assertRefused(self.prune(model), EXIT_INPUT, os.path.join(model, "model.safetensors"),
                           "tensor 'model.layers.0.mlp.gate_proj.weight'", "shape does not match config.json",
                           "expected [96, 64]", "found [128, 64]", model=model, digest=digest)

    def test_shards_named_in_the_index(self):
        sharded = os.path.join(self.case, "sharded")
        self.assertEqual(optima("convert", "--model", self.base, "--out", sharded, "--max-shard-size", "150KB")
                         .returncode, 0)
        index_path = os.path.join(sharded, "model.safetensors.index.json")
        with open(index_path) as f:
            index = json.load(f)
        shards = sorted(set(index["weight_map"].values()))
        self.assertGreater(len(shards), 2)
        # A shard the index names is absent.
        model = self.copy_model(sharded)
        os.remove(os.path.join(model, shards[1]))
        digest = tree_digest(model)
        self.assertRefused(self.prune(model), EXIT_INPUT, "model.safetensors.index.json", f"shard '{shards[1]}'",
                           "is missing", model=model, digest=digest)
        shutil.rmtree(model)
        # The index sends a tensor to a shard that does not hold it.
        model = self.copy_model(sharded)
        name = next(n for n, f in index["weight_map"].items() if f == shards[0])
        with open(os.path.join(model, "model.safetensors.index.json"), "w") as f:
            json.dump(dict(index, weight_map=dict(index["weight_map"], **{name: shards[2]})), f)
        digest = tree_digest(model)
        self.assertRefused(self.prune(model), EXIT_INPUT, shards[2], f"tensor '{name}'",
                           "listed in the shard index is not in this shard", model=model, digest=digest)
        shutil.rmtree(model)
        # An index that is not an index.
        model = self.copy_model(sharded)
        with open(os.path.join(model, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}}, f)
        self.assertRefused(self.prune(model), EXIT_INPUT, "model.safetensors.index.json", "no 'weight_map'")

    def test_dtypes_that_are_not_supported(self):
        name = "model.layers.0.self_attn.k_proj.weight"

        def retype(dtype):
            def edit(tensors):
                i = next(i for i, t in enumerate(tensors) if t.name == name)
                count = len(tensors[i].data) // 4
                tensors[i] = tensors[i]._replace(dtype=dtype, data=bytes(count * DTYPE_SIZE.get(dtype, 4)))
            return edit

        for dtype, fragments in (("C64", ["unknown dtype", '"C64"']),
                                 ("F8_E4M3", ["not supported", "expected F32, F16, BF16 or F64", "found F8_E4M3"]),
                                 ("I32", ["weights must be floating point", "found I32"])):
            with self.subTest(dtype):
                model = self.copy_model()
                edit_tensors(os.path.join(model, "model.safetensors"), retype(dtype))
                digest = tree_digest(model)
                self.assertRefused(self.prune(model), EXIT_INPUT, os.path.join(model, "model.safetensors"),
                                   f"tensor '{name}'", *fragments, model=model, digest=digest)
                if dtype == "F8_E4M3":  # the remedy the message names works
                    converted = os.path.join(self.case, "converted")
                    self.assertEqual(optima("convert", "--model", model, "--out", converted, "--dtype", "float32")
                                     .returncode, EXIT_OK)
                    result = self.prune(converted)
                    self.assertEqual(result.returncode, EXIT_OK, result.stderr)
                    shutil.rmtree(converted)
                    shutil.rmtree(self.out)
                shutil.rmtree(model)

    def test_truncated_or_corrupt_safetensors(self):
        model = self.copy_model()
        weights = os.path.join(model, "model.safetensors")
        with open(weights, "rb") as f:
            raw = f.read()
        for tag, content, fragments in (
                ("truncated", raw[:-1000], ["outside the data (truncated file?)", "tensor '"]),
                ("header-length", struct.pack("<Q", 1 << 40) + raw[8:], ["implausibly large"]),
                ("header-past-end", struct.pack("<Q", len(raw)) + raw[8:], ["header length runs past the end"]),
                ("not-json", raw[:8] + b"\x00garbage" + raw[16:], ["header is not valid JSON"]),
                ("empty", b"", ["too small to be safetensors", "found 0 bytes"])):
            with self.subTest(tag):
                with open(weights, "wb") as f:
                    f.write(content)
                self.assertRefused(self.prune(model), EXIT_INPUT, weights, *fragments)

    def test_weights_truncated_during_the_run(self):
        """Another program truncates the weights mid-run: optima notices (before loading the next block's tensors,
        or, in the instant between, through its SIGBUS handler) and stops with an input error naming the file."""
        self.need_tokenizer()
        model = self.copy_model(self.stories)
        weights = os.path.join(model, "model.safetensors")
        proc = subprocess.Popen([OPTIMA, "--log-level", "debug", "prune", "--model", model, "--out", self.out,
                                 "--calib", self.calib, "--nsamples", "8", "--seqlen", "128", "--method",
                                 "sparsegpt"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "block 0 done" in line:
                os.truncate(weights, os.path.getsize(weights) // 2)
                break
        rest = proc.stderr.read()
        proc.wait(timeout=300)
        message = "".join(seen) + rest
        self.assertEqual(proc.returncode, EXIT_INPUT, message)
        self.assertIn(weights, message)
        self.assertIn("while optima was reading it", message)
        self.assertFalse(os.path.exists(self.out))
        if "shrank" not in message:  # the clean path: the staging directory went too
            self.assertEqual([f for f in os.listdir(self.case) if "partial" in f], [])


class NonFinite(BadInputCase):
    def test_nan_in_a_linear_weight_names_the_layer(self):
        model = self.copy_model()
        name = "model.layers.1.mlp.up_proj.weight"
        edit_floats(os.path.join(model, "model.safetensors"), name, lambda v, s: v.__setitem__(77, math.nan))
        digest = tree_digest(model)
        self.assertRefused(self.prune(model), EXIT_NUMERIC, os.path.join(model, "model.safetensors"),
                           f"tensor '{name}'", "NaN or Inf", "--allow-non-finite", model=model, digest=digest)
        # Asked to go on, optima leaves that layer as it is (byte for byte, the NaN included) and prunes the rest.
        result = self.prune(model, "--allow-non-finite")
        self.assertEqual(result.returncode, EXIT_OK, result.stderr)
        self.assertIn(f"{name[:-len('.weight')]}: left dense", result.stderr)
        with open(os.path.join(self.out, "prune_report.json")) as f:
            report = {layer["name"]: layer for layer in json.load(f)["layers"]}
        self.assertTrue(report[name[:-len(".weight")]]["skipped"])
        dense, written = read_checkpoint(model, raw=True), read_checkpoint(self.out, raw=True)
        self.assertEqual(written[name], dense[name], f"{name} must be written exactly as it was read")
        self.assertTrue(math.isnan(floats(written[name].data)[77]))
        # The next layer is pruned to the default 50%: magnitude zeroes the int(numel / 2) + 1 weights at or below
        # its threshold, and the input has no zeros there.
        down = "model.layers.1.mlp.down_proj.weight"
        self.assertNotIn(0.0, floats(dense[down].data))
        values = floats(written[down].data)
        fraction = sum(v == 0.0 for v in values) / len(values)
        self.assertGreaterEqual(fraction, 0.5, down)
        self.assertLessEqual(fraction, 0.5 + 2.0 / len(values), down)
        self.assertAlmostEqual(report["model.layers.1.mlp.down_proj"]["sparsity"], fraction, delta=1e-12)
        self.assertEqual(tree_digest(model), digest)

    def test_inf_in_a_norm_weight_names_the_tensor(self):
        model = self.copy_model()
        name = "model.layers.0.post_attention_layernorm.weight"
        edit_floats(os.path.join(model, "model.safetensors"), name, lambda v, s: v.__setitem__(5, math.inf))
        self.assertRefused(self.prune(model), EXIT_NUMERIC, f"tensor '{name}'", "NaN or Inf")

    def test_activations_that_overflow_name_the_block(self):
        """Finite weights whose activations overflow: block 1's MLP input norm scaled by 1e30 squares past fp32 in the
        Hessian. The run stops at block 1, naming the input site."""
        self.need_tokenizer()
        model = self.copy_model()
        name = "model.layers.1.post_attention_layernorm.weight"

        def huge(values, shape):
            for i in range(len(values)):
                values[i] = 1e30
        edit_floats(os.path.join(model, "model.safetensors"), name, huge)
        digest = tree_digest(model)
        args = ["--calib", self.calib, "--nsamples", "4", "--seqlen", "32"]
        for method in ("sparsegpt", "wanda", "magnitude"):
            with self.subTest(method):
                self.assertRefused(self.prune(model, "--method", method, *args), EXIT_NUMERIC, "block 1",
                                   "'mlp_in'", "NaN or Inf", model=model, digest=digest)
        result = self.prune(model, "--method", "sparsegpt", "--allow-non-finite", *args)
        self.assertEqual(result.returncode, EXIT_OK, result.stderr)
        self.assertIn("model.layers.1.mlp.gate_proj: left dense", result.stderr)
        with open(os.path.join(self.out, "prune_report.json")) as f:
            layers = {layer["name"]: layer for layer in json.load(f)["layers"]}
        self.assertFalse(layers["model.layers.0.mlp.gate_proj"]["skipped"])
        self.assertTrue(layers["model.layers.1.mlp.gate_proj"]["skipped"])


class Settings(BadInputCase):
    """Settings that need the model to check (sparsity, N:M and seqlen limits are covered in test_prune.py)."""

    def test_calibration_files(self):
        self.need_tokenizer()
        model = self.base
        digest = tree_digest(model)
        empty = os.path.join(self.case, "empty.txt")
        open(empty, "w").close()
        blank = os.path.join(self.case, "blank.txt")
        with open(blank, "w") as f:
            f.write("\n   \n\t\n")
        short = os.path.join(self.case, "short.txt")
        with open(short, "w") as f:
            f.write("Once upon a time.\nThe end.\n")
        records = os.path.join(self.case, "records.jsonl")
        with open(records, "w") as f:
            f.write('{"text": "fine"}\n{"content": "no text key"}\n')
        npy = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "calibration",
                           "c4_opt_reference_n8_l256_seed0.npy")
        cases = [
            (empty, ["wanda"], EXIT_INPUT, [empty, "holds no documents"]),
            (blank, ["wanda"], EXIT_INPUT, [blank, "holds no documents"]),
            (short, ["wanda", "--seqlen", "64"], EXIT_INPUT, [short, "too short for one window",
                                                             "expected more than 64 tokens", "tokens in all"]),
            (records, ["sparsegpt"], EXIT_INPUT, [records + ": line 2", '"text"']),
            (npy, ["wanda", "--nsamples", "4", "--seqlen", "64"], EXIT_INPUT,
             [os.path.basename(npy), "do not match the settings", "expected 4 x 64", "found 8 x 256"]),
            (os.path.join(self.case, "absent.txt"), ["wanda"], EXIT_INPUT, ["absent.txt", "does not exist"]),
        ]
        for calib, extra, code, fragments in cases:
            with self.subTest(os.path.basename(calib)):
                args = ["--calib", calib, "--method", *extra]
                if "--nsamples" not in extra:
                    args += ["--nsamples", "2"]
                self.assertRefused(self.prune(model, *args), code, *fragments, model=model, digest=digest)

    def test_evaluation_text(self):
        self.need_tokenizer()
        empty = os.path.join(self.case, "empty.txt")
        open(empty, "w").close()
        short = os.path.join(self.case, "short.txt")
        with open(short, "w") as f:
            f.write("Once upon a time.\n")
        for dataset, fragments in ((empty, ["evaluation text is empty"]),
                                   (short, ["too short for one window", "expected at least 64 tokens"])):
            result = optima("eval", "--model", self.base, "--dataset", dataset, "--seqlen", "64")
            self.assertRefused(result, EXIT_INPUT, dataset, *fragments)

    def test_tokenizer_missing_or_not_the_models(self):
        self.need_tokenizer()
        args = ["--calib", self.calib, "--method", "wanda", "--nsamples", "2", "--seqlen", "32"]
        absent = os.path.join(self.case, "no-tokenizer-here")
        self.assertRefused(self.prune(self.base, *args, "--tokenizer", absent), EXIT_INPUT, absent,
                           "tokenizer directory not found")
        model = self.copy_model()
        os.remove(os.path.join(model, "tokenizer.model"))
        self.assertRefused(self.prune(model, *args), EXIT_INPUT, model, "no tokenizer files",
                           "tokenizer.json, vocab.json + merges.txt, or tokenizer.model")
        # LLaMA-2's 32000 pieces cannot index a 512-row embedding: refused before any token is fed.
        llama2 = os.path.join(ASSETS, "tokenizers", "llama2")
        if os.path.isdir(llama2):
            config = os.path.join(self.base, "config.json")
            for command in (self.prune(self.base, *args, "--tokenizer", llama2),
                            optima("eval", "--model", self.base, "--dataset", self.calib, "--seqlen", "32",
                                   "--tokenizer", llama2)):
                self.assertRefused(command, EXIT_INPUT, llama2, config, "does not fit the model's vocabulary",
                                   "expected at most 512 tokens", "found 32000 tokens")
        # A tokenizer far smaller than the embedding is most likely another model's: a warning, not an error.
        big_config = os.path.join(self.case, "big.json")
        with open(big_config, "w") as f:
            json.dump(dict(TINY_CONFIG, vocab_size=8192, num_hidden_layers=1), f)
        big = os.path.join(self.case, "big")
        self.assertEqual(optima("make-random", "--config", big_config, "--out", big).returncode, 0)
        result = self.prune(big, *args, "--tokenizer", self.stories)
        self.assertEqual(result.returncode, EXIT_OK, result.stderr)
        self.assertIn("probably another model's tokenizer", result.stderr)


class Output(BadInputCase):
    def mount_tmpfs(self, options):
        """A tmpfs at a fresh directory, unmounted after the test; skips where mounting is not permitted."""
        point = os.path.join(self.case, "mnt")
        os.makedirs(point)
        if os.geteuid() != 0 or shutil.which("mount") is None:
            self.skipTest("mounting a tmpfs needs root")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", point], capture_output=True,
                                text=True)
        if result.returncode != 0:
            self.skipTest(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        self.addCleanup(lambda: subprocess.run(["umount", "-l", point], capture_output=True))
        return point

    def test_existing_output_and_the_input_itself(self):
        existing = os.path.join(self.case, "existing")
        os.makedirs(existing)
        with open(os.path.join(existing, "keep.txt"), "w") as f:
            f.write("mine")
        digest = tree_digest(self.base)
        result = self.prune(self.base, out=existing)
        self.assertEqual(result.returncode, EXIT_USAGE, result.stderr)
        self.assertIn(existing, result.stderr)
        self.assertIn("--overwrite", result.stderr)
        self.assertEqual(os.listdir(existing), ["keep.txt"])
        for out in (self.base, os.path.join(self.base, "pruned")):
            result = self.prune(self.base, "--overwrite", out=out)
            self.assertEqual(result.returncode, EXIT_USAGE, result.stderr)
            self.assertIn("is the input model directory", result.stderr)
        self.assertEqual(tree_digest(self.base), digest)
        # --overwrite replaces the old output only once the new one is complete.
        result = self.prune(self.base, "--overwrite", out=existing)
        self.assertEqual(result.returncode, EXIT_OK, result.stderr)
        self.assertNotIn("keep.txt", os.listdir(existing))
        self.assertIn("prune_report.json", os.listdir(existing))

    def test_read_only_output(self):
        point = self.mount_tmpfs("size=4m")
        subprocess.run(["mount", "-o", "remount,ro", point], check=True)
        out = os.path.join(point, "out")
        digest = tree_digest(self.base)
        self.assertRefused(self.prune(self.base, out=out), EXIT_IO, point, "Read-only file system", out=out,
                           model=self.base, digest=digest)
        self.assertEqual(os.listdir(point), [])

    def test_full_disk(self):
        # The pruned model is about 560 KB; a 256 KB file system fills while the shards are staged, a 700 KB one
        # while they are assembled (staging and final copies need twice the space).
        for size in ("256k", "700k"):
            with self.subTest(size=size):
                point = self.mount_tmpfs(f"size={size}")
                out = os.path.join(point, "out")
                digest = tree_digest(self.base)
                result = self.prune(self.base, out=out)
                self.assertRefused(result, EXIT_IO, point, "No space left on device", out=out, model=self.base,
                                   digest=digest)
                self.assertRegex(result.stderr, r"cannot (write|create|flush|copy)")
                self.assertEqual(os.listdir(point), [], "nothing may remain on the full disk")
                subprocess.run(["umount", point], check=True)
                os.rmdir(point)


class Numerics(BadInputCase):
    """stories260k with dead inputs (zeroed norm entries, zeroed gate rows), duplicated inputs (copied v rows, copied
    gate and up rows), calibrated on 8 tokens for 64- and 172-wide inputs: H is singular everywhere."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not os.path.isdir(cls.stories):
            return
        cls.model = os.path.join(cls.work, "stressed")
        shutil.copytree(cls.stories, cls.model)
        weights = os.path.join(cls.model, "model.safetensors")

        def zero_entries(entries):
            return lambda v, s: [v.__setitem__(i, 0.0) for i in entries]

        def zero_rows(rows):
            return lambda v, s: [v.__setitem__(r * s[1] + c, 0.0) for r in rows for c in range(s[1])]

        def copy_row(src, dst):
            return lambda v, s: [v.__setitem__(dst * s[1] + c, v[src * s[1] + c]) for c in range(s[1])]

        edit_floats(weights, "model.layers.0.input_layernorm.weight", zero_entries([3, 17, 40]))  # dead attn_in
        edit_floats(weights, "model.layers.1.mlp.gate_proj.weight", zero_rows([5, 77]))  # dead mlp_hidden
        edit_floats(weights, "model.layers.2.self_attn.v_proj.weight", copy_row(0, 1))  # duplicated attn_out
        edit_floats(weights, "model.layers.3.mlp.gate_proj.weight", copy_row(21, 20))  # duplicated mlp_hidden
        edit_floats(weights, "model.layers.3.mlp.up_proj.weight", copy_row(21, 20))

    def test_singular_hessians_prune_to_finite_weights(self):
        if not os.path.isdir(self.stories):
            self.skipTest(f"asset missing: {self.stories}")
        dense = read_checkpoint(self.model)
        # Every selector, pattern and reconstruction from 8 calibration tokens: one sweep, one process (each setting
        # is pruned by the same run as alone, and written to its own folder).
        grid = os.path.join(self.case, "grid")
        result = self.prune(self.model, "--method", "magnitude,wanda,sparsegpt", "--pattern", "unstructured,2:4",
                            "--sparsity", "0.5", "--reconstruct", "none,optima", "--calib", self.calib, "--nsamples",
                            "1", "--seqlen", "8", out=grid)
        self.assertEqual(result.returncode, EXIT_OK, result.stderr)
        runs = [(method, pattern, reconstruct,
                 os.path.join(grid, f"{method}{'+optima' if reconstruct == 'optima' else ''}-"
                                    f"{pattern.replace(':', 'of')}-0.5"), [])
                for method in ("magnitude", "wanda", "sparsegpt") for pattern in ("unstructured", "2:4")
                for reconstruct in ("none", "optima")]
        self.assertEqual(sorted(d for d in os.listdir(grid) if d != "sweep.json"),
                         sorted(os.path.basename(run[3]) for run in runs))
        runs += [("sparsegpt", "unstructured", "optima", None, ["--nsamples", "8", "--seqlen", "64", "--qp-solver",
                                                                "iterative"]),
                 ("wanda", "2:4", "optima", None, ["--nsamples", "8", "--seqlen", "64", "--qp-precision", "fp64"])]
        for method, pattern, reconstruct, out, extra in runs:
            with self.subTest(method=method, pattern=pattern, reconstruct=reconstruct, extra=extra):
                if out is None:
                    out = os.path.join(self.case, f"{method}-{pattern.replace(':', 'of')}-{reconstruct}-{len(extra)}")
                    args = ["--method", method, "--pattern", pattern, "--reconstruct", reconstruct, "--calib",
                            self.calib, *extra]
                    if pattern == "unstructured":
                        args += ["--sparsity", "0.5"]
                    result = self.prune(self.model, *args, out=out)
                    self.assertEqual(result.returncode, EXIT_OK, result.stderr)
                with open(os.path.join(out, "prune_report.json")) as f:
                    report = json.load(f)
                self.assertEqual((report["settings"]["method"], report["settings"]["pattern"],
                                  report["settings"]["reconstruct"]), (method, pattern, reconstruct))
                self.assertEqual(len(report["layers"]), 35)
                written = read_checkpoint(out)
                keys = ["damping", "damping_retries", "error_selector", "error_final", "sparsity"]
                if reconstruct == "optima":
                    keys += ["kkt_residual", "reconstruct_damping"]
                for layer in report["layers"]:
                    for key in keys:
                        value = layer.get(key)
                        self.assertTrue(isinstance(value, (int, float)) and math.isfinite(value),
                                        f"{layer['name']}: {key} = {value}")
                    if method == "sparsegpt":
                        self.assertGreater(layer["damping"], 0, layer["name"])
                    if reconstruct == "optima":
                        # Both solvers keep --qp-damp in the answer only where H is singular (the exact one damps
                        # its factorizations and polishes the rows to the undamped optimum elsewhere); an undamped
                        # answer's two residuals are the same.
                        self.assertIn(layer["qp_solver"], ("exact", "iterative"), layer["name"])
                        self.assertGreaterEqual(layer["reconstruct_damping"], 0, layer["name"])
                        if layer["reconstruct_damping"] == 0:
                            self.assertEqual(layer["kkt_residual_undamped"], layer["kkt_residual"], layer["name"])
                        self.assertLess(layer["kkt_residual"], 1e-6, layer["name"])
                        self.assertTrue(math.isfinite(layer["kkt_residual_undamped"]), layer["name"])
                    values = written[layer["name"] + ".weight"].data
                    if pattern == "unstructured":
                        # The report's sparsity is the zero fraction of the matrix as written.
                        self.assertAlmostEqual(layer["sparsity"], sum(v == 0.0 for v in values) / len(values),
                                               delta=1e-12, msg=layer["name"])
                    else:
                        self.assertTrue(layer["pattern_ok"], layer["name"])
                for name, (_, _, shape, values) in written.items():
                    self.assertTrue(all(math.isfinite(v) for v in values), f"{name} has non-finite weights")
                    if not any(name.endswith(linear + ".weight") for linear in LLAMA_LINEARS):
                        self.assertEqual(values, dense[name].data, f"{name} must be unchanged")
                        continue
                    rows, cols = shape
                    zeros = [v == 0.0 for v in values]
                    if pattern == "unstructured":
                        # Only the zeros pruning made count, among the weights that are not zero in the input (the
                        # zeroed gate rows are). Magnitude zeroes int(numel / 2) + 1 weights at or below one
                        # threshold per matrix, SparseGPT the same per 128-column block, Wanda half of each row; the
                        # input's zeros fall below each threshold and take some of its places.
                        nonzero = [i for i, v in enumerate(dense[name].data) if v != 0.0]
                        fraction = sum(zeros[i] for i in nonzero) / len(nonzero)
                        self.assertGreaterEqual(fraction, 0.5 - 1.0 / cols, name)
                        self.assertLessEqual(fraction, 0.5 + 2.0 / len(nonzero), name)
                    else:
                        for g in range(0, rows * cols, 4):
                            self.assertGreaterEqual(sum(zeros[g:g + 4]), 2, f"{name}: group {g // 4}")
                shutil.rmtree(out)


if __name__ == "__main__":
    OPTIMA = os.path.abspath(sys.argv[1])
    ASSETS = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared",
                                                                 "assets")
    unittest.main(argv=[sys.argv[0], "-v"])
