#!/usr/bin/env python3
"""Checks that what optima writes loads unchanged in Python `safetensors` and `transformers`, and that optima reads
what `transformers` and `torch.save` write.

Development tool (needs torch, transformers and safetensors, installed by scripts/setup.sh); run by ctest as the
`interop` test. Each check builds small random models of the real architectures with transformers itself, so
nothing here depends on optima's own idea of the layouts:

  1. transformers models (OPT, LLaMA, Mistral, Qwen2) saved as safetensors and as pytorch_model.bin (single and
     sharded, as old OPT repositories ship them) -> `optima convert` -> every tensor bit-identical in the output
     (read with the safetensors library), which transformers loads with no missing or unexpected keys and whose
     logits equal the original model's exactly;
  2. `optima inspect --json` agrees with transformers on the parameter count and the linear layers;
  3. `optima make-random` models (sharded, float32 and bfloat16) load in transformers with no missing keys and
     match the safetensors library tensor for tensor;
  4. `optima prune` checkpoints of the real stories260k (magnitude, Wanda, SparseGPT; 50% and 2:4; with and
     without OPTIMA) load in transformers and give the perplexity `optima eval` gives, and with --save-hessians
     the written OPTIMA weights equal the float64 optimum of the QP built from the saved Hessians.

Exit status 0 when every check passes, 1 on the first failure, 77 when the Python packages are missing (ctest
reports that as skipped).
"""
import argparse
import json
import os
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


def tiny_configs():
    common = dict(vocab_size=320, hidden_size=32, num_hidden_layers=2, max_position_embeddings=64)
    yield "opt", transformers.OPTConfig(ffn_dim=80, num_attention_heads=4, word_embed_proj_dim=32, **common)
    yield "opt-proj", transformers.OPTConfig(ffn_dim=80, num_attention_heads=4, word_embed_proj_dim=16,
                                             do_layer_norm_before=False, **common)
    llama = dict(intermediate_size=88, num_attention_heads=4, num_key_value_heads=2, **common)
    yield "llama", transformers.LlamaConfig(tie_word_embeddings=False, **llama)
    yield "mistral", transformers.MistralConfig(**llama)
    yield "qwen2", transformers.Qwen2Config(tie_word_embeddings=True, **llama)


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
        print(f"ok  convert + inspect: {name} (safetensors, bin, sharded bin)")


def check_make_random(optima, work):
    for preset in ("opt-tiny", "llama-tiny"):
        for dtype in ("float32", "bfloat16"):
            out = os.path.join(work, f"{preset}-{dtype}")
            run(optima, "make-random", "--preset", preset, "--out", out, "--dtype", dtype,
                "--max-shard-size", "2MB", "--seed", "3")
            written = read_safetensors_dir(out)
            model = load_clean(out)
            state = model.state_dict()
            for key, value in written.items():
                assert torch.equal(state[key].to(value.dtype), value), f"{preset}: {key} differs in transformers"
            with torch.no_grad():
                logits = model(torch.arange(16)[None]).logits
            assert torch.isfinite(logits).all()
            print(f"ok  make-random: {preset} {dtype} ({len(written)} tensors)")


def transformers_perplexity(model, ids, seqlen):
    """The WikiText-2 protocol on a token stream: non-overlapping windows, mean NLL per window, exp of the mean."""
    windows = len(ids) // seqlen
    nlls = []
    with torch.no_grad():
        for w in range(windows):
            window = torch.tensor(ids[w * seqlen:(w + 1) * seqlen])[None]
            logits = model(window).logits.double()
            nlls.append(torch.nn.functional.cross_entropy(logits[0, :-1], window[0, 1:]).item())
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
            run(optima, "prune", "--model", model_dir, "--out", out, "--calib", calib, "--nsamples", "16",
                "--seqlen", "128", "--method", method, "--pattern", pattern, "--sparsity", "0.5",
                "--reconstruct", reconstruct, "--save-hessians", hessians)
            model = load_clean(out)
            want = json.loads(run(optima, "eval", "--model", out, "--dataset", eval_rows, "--seqlen", str(seqlen),
                                  "--json"))["perplexity"]
            got = transformers_perplexity(model, ids, seqlen)
            assert abs(got - want) <= 1e-4 * want, f"{tag}: perplexity {want} in optima, {got} in transformers"
            if reconstruct == "optima":
                check_optimality(tag, dense, load_file(os.path.join(out, "model.safetensors")), hessians,
                                 os.path.join(out, "prune_report.json"))
            print(f"ok  prune: {tag} loads in transformers, perplexity {got:.4f} (optima {want:.4f})")


def check_optimality(tag, dense, pruned, hessian_dir, report_path):
    """For every layer and row: the written weights are zero on the pruned set S and, on the kept set T, equal the
    float64 solution of (H_TT + lambda I) w_T = (H_TT + lambda I) w_T_dense + H_TS w_S_dense, i.e. the exact
    optimum of the QP with the damping the report names."""
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
            kept = written[r] != 0
            pruned_set = ~kept
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
    args = parser.parse_args()
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="optima-interop-") as work:
        try:
            check_convert(args.optima, work)
            check_make_random(args.optima, work)
            check_prune(args.optima, work, args.assets)
        except AssertionError as error:
            print(f"FAIL {error}", file=sys.stderr)
            return 1
    print("interop: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
