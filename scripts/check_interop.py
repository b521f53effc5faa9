#!/usr/bin/env python3
"""Checks that what optima writes loads unchanged in Python `safetensors` and `transformers`, and that optima reads
what `transformers` and `torch.save` write.

Development tool (needs torch, transformers and safetensors, installed by scripts/setup.sh); run by ctest as the
`interop` test. Each check builds small random models of the real architectures with transformers itself, so
nothing here depends on optima's own idea of the layouts:

  1. transformers models (OPT, LLaMA untied and tied, Mistral, Qwen2, Qwen3, Phi-3) saved as safetensors and as pytorch_model.bin (single and
  1. transformers models (OPT, LLaMA, Mistral, Qwen2, Gemma 2, Gemma 3 text) saved as safetensors and as pytorch_model.bin (single and
     sharded, as old OPT repositories ship them) -> `optima convert` -> every tensor bit-identical in the output
     (read with the safetensors library), which transformers loads with no missing or unexpected keys and whose
     logits equal the original model's exactly;
  2. `optima inspect --json` agrees with transformers on the parameter count and the linear layers;
  3. `optima make-random` models (sharded, float32 and bfloat16) load in transformers with no missing keys and
     match the safetensors library tensor for tensor; their values are those of each module's initialisation
     (norm weights one, biases zero, linear and embedding weights drawn from N(0, std^2) with the config's std);
     the same seed writes byte-identical files, another seed other random tensors, and bfloat16 is the float32
     model rounded;
  4. `optima prune` checkpoints of the real stories260k (magnitude, Wanda, SparseGPT; 50% and 2:4; with and
     without OPTIMA) load in transformers and give the perplexity `optima eval` gives; the masks saved with
     --save-masks have the requested sparsity and are zero in the written weights; and with --save-hessians the
     written OPTIMA weights equal the float64 optimum of the QP built from the saved Hessians and masks;
  5. the evaluation protocol: rows laid out as the Hugging Face WikiText-2 rows are (empty rows between the text
     rows, each text row ending in "\n") written as JSON Lines; Python joins them with "\n\n", tokenizes the result
     with transformers' tokenizer of the real opt-small and computes the perplexity with transformers' model;
     `optima eval` on the JSON Lines file must give the same token count and the same perplexity (1e-4 relative).
  6. random Qwen3, Phi-3 (LongRoPE, partial rotary, sliding window) and tied LLaMA-3.2-style models made by
     transformers, with the stories260k tokenizer: `optima eval` gives transformers' perplexity (for Phi-3 at
     sequence lengths on both sides of original_max_position_embeddings, where LongRoPE switches factors), and
     `optima prune` outputs (SparseGPT with OPTIMA) load in transformers with no missing keys, keep a tied
     head tied (no lm_head.weight written, config.json unchanged) and give the perplexity `optima eval` gives.
  5. Gemma 2 and Gemma 3 text: make-random --config loads in transformers; random transformers models of Gemma 2,
     Gemma 3 text and multimodal Gemma 3 (one prune each) load in transformers as their class with optima's
     perplexity, with every tensor but the pruned linears (a vision tower too) and config.json unchanged.

Exit status 0 when every check passes, 1 on the first failure, 77 when the Python packages are missing (ctest
reports that as skipped).
"""
import argparse
import json
import math
import os
import shutil
import re
import subprocess
import sys
import tempfile

try:
    import torch
    import transformers
    from safetensors.torch import load_file
except ImportError as error:  # pragma: no cover - depends on the environment
    print(f"interop checks skipped: {error}", file=sys.stderr)
    sys.exit(77)


def run(optima, *args):
    result = subprocess.run([optima, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"optima {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def read_safetensors_dir(path):
    tensors = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            for key, value in load_file(os.path.join(path, name)).items():
                assert key not in tensors, f"{key} stored twice"
                tensors[key] = value
    return tensors


# The input site of each linear layer, by its name in transformers (a fused projection reads one site).
SITE_OF = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "qkv_proj": "attn_in",
           "o_proj": "attn_out", "out_proj": "attn_out", "gate_proj": "mlp_in", "up_proj": "mlp_in",
           "gate_up_proj": "mlp_in", "fc1": "mlp_in", "down_proj": "mlp_hidden", "fc2": "mlp_hidden"}


def tiny_configs():
    common = dict(vocab_size=320, hidden_size=32, num_hidden_layers=2, max_position_embeddings=64)
    yield "opt", transformers.OPTConfig(ffn_dim=80, num_attention_heads=4, word_embed_proj_dim=32, **common)
    yield "opt-proj", transformers.OPTConfig(ffn_dim=80, num_attention_heads=4, word_embed_proj_dim=16,
                                             do_layer_norm_before=False, **common)
    llama = dict(intermediate_size=88, num_attention_heads=4, num_key_value_heads=2, **common)
    yield "llama", transformers.LlamaConfig(tie_word_embeddings=False, **llama)
    yield "mistral", transformers.MistralConfig(**llama)
    yield "qwen2", transformers.Qwen2Config(tie_word_embeddings=True, **llama)
    yield from new_family_configs(common, llama)
    yield from gemma_configs(common)


def new_family_configs(common, llama):
    """Qwen3, Phi-3 and a tied LLaMA-3.2-style model with their characteristic options switched on; weights 5x the
    usual scale, so that the models are far from uniform and a numerical difference shows in the perplexity."""
    yield "llama-tied", transformers.LlamaConfig(
        tie_word_embeddings=True, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        rope_theta=500000.0, initializer_range=0.1, **llama)
    yield "qwen3", transformers.Qwen3Config(tie_word_embeddings=True, head_dim=16, use_sliding_window=True,
                                            sliding_window=24, max_window_layers=1, initializer_range=0.1, **llama)
    phi3 = dict(common, max_position_embeddings=128)
    yield "phi3", transformers.Phi3Config(
        num_attention_heads=2, num_key_value_heads=1, intermediate_size=88, original_max_position_embeddings=32,
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.2, 1.5, 2.0],
                      "long_factor": [3.0, 4.5, 6.0, 12.0]},
        partial_rotary_factor=0.5, sliding_window=40, pad_token_id=None, bos_token_id=1, eos_token_id=2,
        initializer_range=0.1, **phi3)


def gemma_configs(common):
    """Gemma 2 and Gemma 3 text with their options on: soft-capping, a sliding window shorter than the sequences,
    grouped-query attention, linear rotary scaling of Gemma 3's full-attention layers, tied and untied heads."""
    gemma = dict(common, intermediate_size=88, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 sliding_window=8, query_pre_attn_scalar=24, num_hidden_layers=3)
    yield "gemma2", transformers.Gemma2Config(attn_logit_softcapping=20.0, final_logit_softcapping=15.0, **gemma)
    yield "gemma3-text", transformers.Gemma3TextConfig(
        sliding_window_pattern=2, tie_word_embeddings=False, final_logit_softcapping=10.0,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}, **gemma)


def random_model(config, seed):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mix-up of them is visible
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(-1, 1)
    return model


def save_bin(model, path, shards):
    """pytorch_model.bin as torch.save writes it, optionally sharded with an index."""
    os.makedirs(path, exist_ok=True)
    model.config.save_pretrained(path)
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight" or
             not model.config.tie_word_embeddings}
    if shards == 1:
        torch.save(state, os.path.join(path, "pytorch_model.bin"))
        return
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[i::shards]}
        torch.save(part, os.path.join(path, file))
        weight_map.update({n: file for n in part})
    with open(os.path.join(path, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


def load_clean(path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info[kind], f"{path}: transformers reports {kind}: {info[kind]}"
    return model.eval()


def check_convert(optima, work):
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(1))
    for seed, (name, config) in enumerate(tiny_configs()):
        model = random_model(config, seed)
        with torch.no_grad():
            want = model(ids).logits
        sources = {}
        sources["safetensors"] = os.path.join(work, f"{name}-st")
        model.save_pretrained(sources["safetensors"], max_shard_size="40KB")
        # The .bin readers do not depend on the family: the OPT and LLaMA-style models check them.
        if not name.startswith("gemma"):
            sources["bin"] = os.path.join(work, f"{name}-bin")
            save_bin(model, sources["bin"], shards=1)
            sources["bin-sharded"] = os.path.join(work, f"{name}-bin3")
            save_bin(model, sources["bin-sharded"], shards=3)
        reference = {k: v for k, v in model.state_dict().items()}
        for kind, src in sources.items():
            out = src + "-optima"
            run(optima, "convert", "--model", src, "--out", out, "--max-shard-size", "50KB")
            written = read_safetensors_dir(out)
            for key, value in written.items():
                assert key in reference, f"{name}/{kind}: unexpected tensor {key}"
                assert value.dtype == reference[key].dtype and torch.equal(value, reference[key]), \
                    f"{name}/{kind}: tensor {key} differs"
            stored = set(reference) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
            assert stored == set(written), f"{name}/{kind}: tensors differ: {stored ^ set(written)}"
            index = os.path.join(out, "model.safetensors.index.json")
            assert os.path.exists(index), f"{name}/{kind}: expected a sharded output"
            with torch.no_grad():
                got = load_clean(out)(ids).logits
            assert torch.equal(got, want), f"{name}/{kind}: logits differ by {(got - want).abs().max()}"

            report = json.loads(run(optima, "inspect", out, "--json"))
            assert report["parameters"] == sum(v.numel() for v in written.values())
            linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"
                       and "project_" not in n]
            assert sorted(l["name"] for l in report["linears"]) == sorted(linears), f"{name}: linear layers differ"
            for layer in report["linears"]:  # the input site each reads, by the layer's own name in transformers
                want_site = SITE_OF[layer["name"].split(".")[-1]]
                assert layer["input"] == want_site, f"{name}: {layer['name']} reads {layer['input']}, not {want_site}"
        print(f"ok  convert + inspect: {name} (safetensors, bin, sharded bin)")
        print(f"ok  convert + inspect: {name} ({', '.join(sources)})")


def check_initialisation(tag, model, std):
    """Checks each parameter of a make-random model by the module that holds it: norm weights one, biases zero,
    linear and embedding weights with the mean, standard deviation and share within one standard deviation of
    N(0, std^2), to six standard errors for their element count. Returns the names of the random parameters."""
    covered, random = set(), set()
    for prefix, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if not params:
            continue
        where = f"{tag}: {prefix} ({type(module).__name__})"
        if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
            one = 0 if type(module).__name__.startswith("Gemma") else 1  # Gemma norms scale by (1 + w)
            assert bool((module.weight == one).all()), f"{where}: norm weight is not all {one}"
        elif isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            w = module.weight.detach().double().flatten()
            n = w.numel()
            mean, sd = float(w.mean()), float(w.std())
            inside = float((w.abs() <= std).double().mean())
            assert abs(mean) <= 6 * std / math.sqrt(n), f"{where}: weight mean {mean:.3g} is not 0 (std {std})"
            assert abs(sd / std - 1) <= 6 / math.sqrt(2 * n), f"{where}: weight std {sd:.5g}, expected {std}"
            within = math.erf(1 / math.sqrt(2))  # the share of a normal distribution within one std: 0.6827
            assert abs(inside - within) <= 6 * math.sqrt(within * (1 - within) / n), \
                f"{where}: {inside:.4f} of the weights within one std, expected {within:.4f} of a normal"
            random.add(f"{prefix}.weight")
        else:
            raise AssertionError(f"{where}: a module with parameters this check does not know")
        if params.get("bias") is not None:
            assert bool((module.bias == 0).all()), f"{where}: bias is not all zeros"
        covered |= {f"{prefix}.{name}" for name in params}
    missed = set(dict(model.named_parameters())) - covered
    assert not missed, f"{tag}: parameters not checked: {sorted(missed)}"
    return random


def same_files(a, b):
    """Whether two folders hold the same files with the same bytes."""
    if sorted(os.listdir(a)) != sorted(os.listdir(b)):
        return False
    for name in os.listdir(a):
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            if fa.read() != fb.read():
                return False
    return True


def check_make_random(optima, work):
    for preset in ("opt-tiny", "llama-tiny"):
        def make(dtype, seed, tag=""):
            out = os.path.join(work, f"{preset}-{dtype}-{seed}{tag}")
            run(optima, "make-random", "--preset", preset, "--out", out, "--dtype", dtype,
                "--max-shard-size", "2MB", "--seed", str(seed))
            return out

        outputs = {"float32": make("float32", 3), "bfloat16": make("bfloat16", 3)}
        files = {}
        for dtype, out in outputs.items():
            written = read_safetensors_dir(out)
            model = load_clean(out)
            state = model.state_dict()
            for key, value in written.items():
                assert torch.equal(state[key].to(value.dtype), value), f"{preset}: {key} differs in transformers"
            with torch.no_grad():
                logits = model(torch.arange(16)[None]).logits
            assert torch.isfinite(logits).all()
            files[dtype] = written
            if dtype == "float32":
                with open(os.path.join(out, "config.json")) as f:
                    config = json.load(f)
                std = config["init_std"] if "init_std" in config else config["initializer_range"]
                random = check_initialisation(preset, model, std) & set(written)
            print(f"ok  make-random: {preset} {dtype} ({len(written)} tensors)")
        assert random, f"{preset}: no random tensors"
        for key, value in files["float32"].items():
            rounded = files["bfloat16"][key]
            assert rounded.dtype == torch.bfloat16 and torch.equal(value.to(torch.bfloat16), rounded), \
                f"{preset}: {key} in bfloat16 is not the float32 tensor rounded"
        assert same_files(outputs["float32"], make("float32", 3, "-again")), \
            f"{preset}: the same seed wrote different files"
        other = read_safetensors_dir(make("float32", 4))
        for key, value in files["float32"].items():
            assert torch.equal(other[key], value) == (key not in random), \
                f"{preset}: {key} {'is the same' if key in random else 'differs'} with another seed"
        print(f"ok  make-random: {preset} initialisation ({len(random)} random tensors, std {std}), seeds, "
              f"bfloat16 rounding")


def check_make_random_gemma(optima, work):
    """`optima make-random --config` for the Gemma families: loads in transformers with no missing keys, every tensor
    as written, each initialised as transformers would (Gemma norms zero), a tied head left tied."""
    for name, config in gemma_configs(dict(vocab_size=320, hidden_size=32, max_position_embeddings=64)):
        config_file = os.path.join(work, f"{name}-random-config.json")
        config.save_pretrained(os.path.join(work, f"{name}-random-config"))
        os.rename(os.path.join(work, f"{name}-random-config", "config.json"), config_file)
        out = os.path.join(work, f"{name}-random")
        run(optima, "make-random", "--config", config_file, "--out", out, "--seed", "5")
        written = read_safetensors_dir(out)
        model = load_clean(out)
        state = model.state_dict()
        for key, value in written.items():
            assert torch.equal(state[key], value), f"{name}: {key} differs in transformers"
        assert ("lm_head.weight" in written) == (not config.tie_word_embeddings), f"{name}: lm_head tie not kept"
        random = check_initialisation(name, model, config.initializer_range) & set(written)
        assert random, f"{name}: no random tensors"
        print(f"ok  make-random --config: {name} ({len(written)} tensors, {len(random)} random)")


def check_prune_gemma(optima, work, assets):
    """Random Gemma models made by transformers (with the stories260k tokenizer, whose 512 tokens they take as their
    vocabulary), one prune each: Gemma 2, Gemma 3 text and a multimodal Gemma 3 (Gemma3ForConditionalGeneration with
    a tiny vision tower). The pruned checkpoint loads in transformers as the original class with optima eval's
    perplexity, the linear layers have the requested sparsity, a tied head stays tied, and every tensor outside the
    pruned linears (the vision tower and projector included) and config.json are as they were, byte for byte. The
    methods, OPTIMA and the propagation modes do not depend on the family (stories260k checks each below); the
    runs are spread over them. The dense forward pass is checked against transformers by the golden unit tests."""
    stories = os.path.join(assets, "models", "stories260k")
    if not os.path.isfile(os.path.join(stories, "tokenizer.model")):
        print(f"skip prune gemma: asset missing: {stories}")
        return
    calib = os.path.join(assets, "text", "tinystories", "tiny.utf8")
    with open(calib, encoding="utf-8") as f:
        rows = [line for line in f.read().splitlines() if line.strip()][-12:]
    eval_rows = os.path.join(work, "gemma-eval-rows.txt")
    with open(eval_rows, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    joined = os.path.join(work, "gemma-eval-joined.txt")
    with open(joined, "w", encoding="utf-8") as f:
        f.write("\n\n".join(rows))
    ids = json.loads(run(optima, "tokenize", "--model", stories, "--file", joined, "--json"))["ids"]
    seqlen = 16  # longer than the sliding window of 8
    assert len(ids) >= 4 * seqlen, f"gemma eval text too short: {len(ids)} tokens"
    runs = {"gemma2": ("sparsegpt", "optima", "true-sequential"), "gemma3-text": ("wanda", "none", "reference"),
            "gemma3-mm": ("wanda", "optima", "true-sequential")}
    configs = list(gemma_configs(dict(vocab_size=512, hidden_size=32, max_position_embeddings=64)))
    configs.append(("gemma3-mm", gemma3_multimodal_config(configs[-1][1])))
    for seed, (name, config) in enumerate(configs):
        model_dir = os.path.join(work, f"{name}-dense")
        config.initializer_range = 0.3  # far from a uniform prediction, so a forward-pass mismatch shows
        dense_model = random_model(config, 50 + seed)
        dense_model.save_pretrained(model_dir)
        for file in ("tokenizer.model", "tokenizer_config.json"):
            shutil.copy(os.path.join(stories, file), model_dir)
        method, reconstruct, propagation = runs[name]
        tag = f"{name}-{method}-{reconstruct}-{propagation}"
        out = os.path.join(work, tag)
        run(optima, "prune", "--model", model_dir, "--out", out, "--calib", calib, "--nsamples", "8",
            "--seqlen", str(seqlen), "--method", method, "--sparsity", "0.5", "--reconstruct", reconstruct,
            "--propagation", propagation)
        dense = load_file(os.path.join(model_dir, "model.safetensors"))
        written = load_file(os.path.join(out, "model.safetensors"))
        assert set(written) == set(dense), f"{tag}: tensors differ from the input's: {set(written) ^ set(dense)}"
        tied = config.tie_word_embeddings
        assert (any(k.endswith("lm_head.weight") for k in written)) == (not tied), f"{tag}: lm_head tie not kept"
        pruned = 0
        for key, value in written.items():
            if key.endswith("_proj.weight") and ".layers." in key and "vision_tower" not in key:
                zeros = float((value == 0).double().mean())
                assert abs(zeros - 0.5) <= 0.01, f"{tag}: {key} is {zeros:.3f} zeros, expected 0.5"
                pruned += 1
            else:  # copied unchanged: same dtype, shape and bytes
                assert value.dtype == dense[key].dtype and torch.equal(value.view(torch.uint8).flatten(),
                                                                       dense[key].view(torch.uint8).flatten()), \
                    f"{tag}: {key} changed"
        assert pruned == 7 * config.get_text_config().num_hidden_layers, f"{tag}: {pruned} pruned linears"
        kept = len(written) - pruned
        with open(os.path.join(model_dir, "config.json"), "rb") as f, open(os.path.join(out, "config.json"), "rb") as g:
            assert f.read() == g.read(), f"{tag}: config.json changed"
        model = load_clean(out)
        assert type(model) is type(dense_model), f"{tag}: loads as {type(model).__name__}"
        want = json.loads(run(optima, "eval", "--model", out, "--dataset", eval_rows, "--seqlen", str(seqlen),
                              "--json"))["perplexity"]
        got = transformers_perplexity(model, ids, seqlen)
        assert abs(got - want) <= 1e-4 * want, f"{tag}: perplexity {want} in optima, {got} in transformers"
        print(f"ok  prune: {tag} loads in transformers as {type(model).__name__}, perplexity {got:.4f} (optima "
              f"{want:.4f}); {pruned} linears at 50%, {kept} other tensors and config.json unchanged")


def gemma3_multimodal_config(text_config):
    """Gemma3ForConditionalGeneration around `text_config` with a vision tower of a few thousand parameters."""
    vision = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)
    text = text_config.to_dict()
    text["tie_word_embeddings"] = True
    return transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                     tie_word_embeddings=True)


def transformers_perplexity(model, ids, seqlen):
    """The WikiText-2 protocol on a token stream: non-overlapping windows, mean NLL per window, exp of the mean."""
    windows = len(ids) // seqlen
    batch = torch.tensor(ids[:windows * seqlen]).view(windows, seqlen)
    with torch.no_grad():
        logits = model(batch).logits.double()  # all windows in one call: each window is its own sequence
    nlls = [torch.nn.functional.cross_entropy(logits[w, :-1], batch[w, 1:]).item() for w in range(windows)]
    return float(torch.tensor(nlls, dtype=torch.float64).mean().exp())


def check_prune(optima, work, assets):
    """Pruned stories260k checkpoints load in transformers and give optima's perplexity; with --save-hessians the
    saved H and the written weights satisfy OPTIMA's optimality conditions, checked here in float64."""
    model_dir = os.path.join(assets, "models", "stories260k")
    if not os.path.isdir(model_dir):
        print(f"skip prune: asset missing: {model_dir}")
        return
    calib = os.path.join(assets, "text", "tinystories", "tiny.utf8")
    with open(calib, encoding="utf-8") as f:
        rows = [line for line in f.read().splitlines() if line.strip()][-40:]
    eval_rows = os.path.join(work, "eval-rows.txt")
    with open(eval_rows, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    joined = os.path.join(work, "eval-joined.txt")
    with open(joined, "w", encoding="utf-8") as f:
        f.write("\n\n".join(rows))  # what `optima eval` tokenizes (algorithms.md section 2)
    ids = json.loads(run(optima, "tokenize", "--model", model_dir, "--file", joined, "--json"))["ids"]
    dense = load_file(os.path.join(model_dir, "model.safetensors"))
    seqlen = 128
    for method, pattern in [(m, p) for m in ("magnitude", "wanda", "sparsegpt") for p in ("unstructured", "2:4")]:
        for reconstruct in ("none", "optima"):
            tag = f"{method}-{pattern.replace(':', 'of')}-{reconstruct}"
            out, hessians = os.path.join(work, tag), os.path.join(work, tag + "-hessians")
            # --eval: optima's perplexity of the checkpoint it wrote, in the same process (one start-up less).
            printed = run(optima, "prune", "--model", model_dir, "--out", out, "--calib", calib, "--nsamples", "16",
                          "--seqlen", "128", "--method", method, "--pattern", pattern, "--sparsity", "0.5",
                          "--reconstruct", reconstruct, "--save-hessians", hessians, "--save-masks", "--eval",
                          eval_rows, "--eval-seqlen", str(seqlen))
            pruned = load_file(os.path.join(out, "model.safetensors"))
            masks = read_masks(os.path.join(out, "masks.safetensors"), pruned)
            check_masks(tag, method, pattern, reconstruct, dense, pruned, masks)
            model = load_clean(out)
            want = float(re.search(r"^perplexity ([0-9.]+) ", printed, re.MULTILINE).group(1))
            got = transformers_perplexity(model, ids, seqlen)
            assert abs(got - want) <= 1e-4 * want, f"{tag}: perplexity {want} in optima, {got} in transformers"
            if reconstruct == "optima":
                check_optimality(tag, dense, pruned, masks, hessians, os.path.join(out, "prune_report.json"))
            print(f"ok  prune: {tag} loads in transformers, perplexity {got:.4f} (optima {want:.4f})")


def check_eval_protocol(optima, work, assets):
    """`optima eval` on JSON Lines rows (empty ones kept) = "\n\n".join(rows) through transformers, token for token."""
    model_dir = os.path.join(assets, "models", "opt-small")
    raw = os.path.join(assets, "text", "wikitext-2-raw", "wiki.test.raw")
    if not os.path.isdir(model_dir) or not os.path.isfile(raw):
        print(f"skip eval protocol: asset missing: {model_dir} or {raw}")
        return
    with open(raw, encoding="utf-8", newline="") as f:
        lines = [line.rstrip("\r\n") for line in f][:160]
    # The Hugging Face rows: an empty row before each line, each line ending in a newline.
    rows = []
    for line in lines:
        rows += ["", line + "\n"] if line else [""]
    assert "" in rows and len(rows) > len(lines)
    data = os.path.join(work, "wiki-rows.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({"text": row}) + "\n")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("\n\n".join(rows))["input_ids"]
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    seqlen = 256
    got = json.loads(run(optima, "eval", "--model", model_dir, "--dataset", data, "--seqlen", str(seqlen),
                         "--dtype", "float32", "--json"))
    assert got["tokens"] == len(ids), f"eval protocol: optima tokenized {got['tokens']} tokens, transformers {len(ids)}"
    want = transformers_perplexity(model, ids, seqlen)
    assert abs(got["perplexity"] - want) <= 1e-4 * want, \
        f"eval protocol: perplexity {got['perplexity']} in optima, {want} in transformers"
    # The same file read as plain lines is another text (the JSON, not the rows): the format matters.
    lines_mode = json.loads(run(optima, "eval", "--model", model_dir, "--dataset", data, "--seqlen", str(seqlen),
                                "--text-format", "lines", "--dtype", "float32", "--json"))
    assert lines_mode["tokens"] != len(ids)
    print(f"ok  eval protocol: {len(rows)} JSON Lines rows ({rows.count('')} empty), {len(ids)} tokens, "
          f"perplexity {got['perplexity']:.4f} (transformers {want:.4f})")


def check_new_families(optima, work, assets):
    """Qwen3, Phi-3 and tied LLaMA: optima's eval equals transformers' perplexity on the dense model and on pruned
    outputs reloaded in transformers; a tied head stays tied in the output."""
    stories = os.path.join(assets, "models", "stories260k")
    if not os.path.isdir(stories):
        print(f"skip new families: asset missing: {stories}")
        return
    calib = os.path.join(assets, "text", "tinystories", "tiny.utf8")
    with open(calib, encoding="utf-8") as f:
        rows = [line for line in f.read().splitlines() if line.strip()][-30:]
    eval_rows = os.path.join(work, "family-eval-rows.txt")
    with open(eval_rows, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    joined = os.path.join(work, "family-eval-joined.txt")
    with open(joined, "w", encoding="utf-8") as f:
        f.write("\n\n".join(rows))
    ids = json.loads(run(optima, "tokenize", "--model", stories, "--file", joined, "--json"))["ids"]
    common = dict(vocab_size=512, hidden_size=32, num_hidden_layers=2, max_position_embeddings=64)
    llama = dict(intermediate_size=88, num_attention_heads=4, num_key_value_heads=2, **common)
    for seed, (name, config) in enumerate(new_family_configs(common, llama)):
        model = random_model(config, 50 + seed)
        src = os.path.join(work, f"family-{name}")
        model.save_pretrained(src)
        for side in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
            if os.path.exists(os.path.join(stories, side)):
                shutil.copy(os.path.join(stories, side), src)
        # Phi-3: both sides of original_max_position_embeddings (32), where LongRoPE changes factors.
        seqlens = (32, 33, 48) if config.model_type == "phi3" else (48,)
        for seqlen in seqlens:
            want = json.loads(run(optima, "eval", "--model", src, "--dataset", eval_rows, "--seqlen", str(seqlen),
                                  "--json"))["perplexity"]
            got = transformers_perplexity(load_clean(src), ids, seqlen)
            assert abs(got - want) <= 1e-4 * want, f"{name}: dense perplexity {want} in optima, {got} in transformers"
            print(f"ok  families: {name} dense, seqlen {seqlen}: perplexity {got:.6f} (optima {want:.6f}, relative "
                  f"difference {abs(got - want) / want:.1e})")
        with open(os.path.join(src, "config.json")) as f:
            config_text = f.read()
        for method, reconstruct in (("sparsegpt", "optima"),):  # one run per family keeps the check short
            out = os.path.join(work, f"family-{name}-{method}")
            run(optima, "prune", "--model", src, "--out", out, "--calib", calib, "--nsamples", "8", "--seqlen", "48",
                "--method", method, "--sparsity", "0.5", "--reconstruct", reconstruct)
            written = read_safetensors_dir(out)
            if config.tie_word_embeddings:
                assert "lm_head.weight" not in written, f"{name}: a tied head was written as lm_head.weight"
            with open(os.path.join(out, "config.json")) as f:
                assert f.read() == config_text, f"{name}: config.json changed"
            seqlen = seqlens[-1]
            want = json.loads(run(optima, "eval", "--model", out, "--dataset", eval_rows, "--seqlen", str(seqlen),
                                  "--json"))["perplexity"]
            got = transformers_perplexity(load_clean(out), ids, seqlen)
            assert abs(got - want) <= 1e-4 * want, f"{name}/{method}: perplexity {want} in optima, {got} in transformers"
            print(f"ok  families: {name} {method}+{reconstruct} loads in transformers, perplexity {got:.6f} "
                  f"(optima {want:.6f}, relative difference {abs(got - want) / want:.1e})")


def read_masks(path, weights):
    """{layer: bool [rows, cols] tensor, True = pruned} from masks.safetensors, whose rows pack 8 input columns per
    byte: bit i of byte k is column 8k + i, least significant bit first, 1 = pruned. The padding bits past the last
    column must be clear."""
    masks = {}
    for key, packed in load_file(path).items():
        assert key.endswith(".mask") and packed.dtype == torch.uint8, f"{path}: {key} is not a packed mask"
        name = key[:-len(".mask")]
        rows, cols = weights[name + ".weight"].shape
        assert list(packed.shape) == [rows, (cols + 7) // 8], f"{path}: {key} has shape {list(packed.shape)}"
        bits = ((packed.to(torch.int32).unsqueeze(-1) >> torch.arange(8, dtype=torch.int32)) & 1).reshape(rows, -1)
        assert not bool(bits[:, cols:].any()), f"{path}: {key} has padding bits set"
        masks[name] = bits[:, :cols].bool()
    return masks


def check_masks(tag, method, pattern, reconstruct, dense, pruned, masks):
    """Every prunable layer has a mask with the requested sparsity (exactly 2 of every 4 inputs, or 50% of the matrix
    up to one weight per threshold), the written weights are zero on it, and magnitude and Wanda without OPTIMA keep
    the other weights as they were."""
    linears = {key[:-len(".weight")] for key in dense if key.endswith("_proj.weight")}
    assert set(masks) == linears, f"{tag}: masks differ from the prunable layers: {set(masks) ^ linears}"
    for name, mask in masks.items():
        written, weight = pruned[name + ".weight"], dense[name + ".weight"]
        if pattern == "2:4":
            per_group = mask.reshape(mask.shape[0], -1, 4).sum(-1)
            assert bool((per_group == 2).all()), f"{tag}: {name}: a group of 4 without exactly 2 pruned"
        else:
            fraction = float(mask.double().mean())
            assert abs(fraction - 0.5) <= 1e-3, f"{tag}: {name}: {fraction:.4f} of the weights pruned, expected 0.5"
        assert bool((written[mask] == 0).all()), f"{tag}: {name}: weights in the mask are not zero"
        if method in ("magnitude", "wanda") and reconstruct == "none":
            assert torch.equal(written[~mask], weight[~mask]), f"{tag}: {name}: kept weights changed"
    print(f"ok  prune: {tag} masks ({len(masks)} layers) have the {pattern} sparsity and are zero in the weights")


def check_optimality(tag, dense, pruned, masks, hessian_dir, report_path):
    """For every layer and row, with the pruned set S from the saved mask and the kept set T the rest: the written
    weights on T equal the float64 solution of (H_TT + lambda I) w_T = (H_TT + lambda I) w_T_dense + H_TS w_S_dense,
    i.e. the exact optimum of the QP with the damping the report names (zero on S is checked in check_masks)."""
    with open(report_path) as f:
        layers = json.load(f)["layers"]
    saved = {}
    for name in sorted(os.listdir(hessian_dir)):
        saved.update(load_file(os.path.join(hessian_dir, name)))
    worst = 0.0
    for layer in layers:
        h = saved[f"model.layers.{layer['block']}.{layer['input']}"].double()
        h = (h + h.T) / 2
        assert bool((torch.diagonal(h) > 0).all()), f"{tag}: {layer['name']} has dead inputs; check needs none"
        h += layer["reconstruct_damping"] * torch.eye(h.shape[0], dtype=torch.float64)
        w = dense[layer["name"] + ".weight"].double()
        written = pruned[layer["name"] + ".weight"].double()
        for r in range(w.shape[0]):
            pruned_set = masks[layer["name"]][r]
            kept = ~pruned_set
            if not bool(kept.any()):
                continue
            h_tt = h[kept][:, kept]
            rhs = h_tt @ w[r, kept] + h[kept][:, pruned_set] @ w[r, pruned_set]
            exact = torch.linalg.solve(h_tt, rhs)
            error = float((written[r, kept] - exact).norm() / exact.norm())
            worst = max(worst, error)
    # The written weights are float32: their rounding (6e-8) times H's conditioning bounds the agreement.
    assert worst <= 1e-4, f"{tag}: written weights are {worst:.2e} (relative) from the exact QP optimum"
    print(f"ok  prune: {tag} weights equal the float64 QP optimum to {worst:.1e} (relative)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optima", required=True, help="path to the optima binary")
    parser.add_argument("--assets", default=os.environ.get("OPTIMA_ASSETS", os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "assets")), help="offline assets folder")
    parser.add_argument("--only", choices=["convert", "make-random", "make-random-gemma", "prune-gemma", "prune",
                                           "eval-protocol", "new-families"],
                        help="run this check alone")
    args = parser.parse_args()
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="optima-interop-") as work:
        try:
            checks = {"convert": lambda: check_convert(args.optima, work),
                      "make-random": lambda: check_make_random(args.optima, work),
                      "make-random-gemma": lambda: check_make_random_gemma(args.optima, work),
                      "prune-gemma": lambda: check_prune_gemma(args.optima, work, args.assets),
                      "prune": lambda: check_prune(args.optima, work, args.assets),
                      "eval-protocol": lambda: check_eval_protocol(args.optima, work, args.assets),
                      "new-families": lambda: check_new_families(args.optima, work, args.assets)}
            for name, check in checks.items():
                if args.only in (None, name):
                    check()
        except AssertionError as error:
            print(f"FAIL {error}", file=sys.stderr)
            return 1
    print("interop: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
