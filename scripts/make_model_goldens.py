#!/usr/bin/env python3
"""Writes the model golden files under tests/data/models/: small random checkpoints of each supported family made by
`transformers`, and the logits (and a perplexity) `transformers` computes on fixed token ids.

Development tool: needs torch and transformers (pinned in scripts/setup.sh; generated with transformers 5.23.0 and
torch 2.12.0). The C++ tests (tests/unit/test_model.cpp) require optima's forward pass to match these logits within
1e-4 absolute in fp32. Run from the repository root:  .venv/bin/python scripts/make_model_goldens.py

Each folder NAME/ holds:
  config.json, model.safetensors   the checkpoint, as save_pretrained writes it
  golden.safetensors               "ids" int64 [2, 24], "logits" float32 [2, 24, vocab] (model in fp32, eager attention),
                                   "stream" int64 [n] and "window_nll" float64 [windows]: the perplexity protocol
                                   on a token stream (non-overlapping windows of `seqlen`, mean NLL of the
                                   seqlen - 1 next-token predictions of each window)
  golden.json                      {"seqlen": ..., "perplexity": ...} for that stream
and, for the models written since these were added (qwen3, phi3-longrope, llama32-tied):
  "hidden.B" float32 [2, 24, hidden]  the output of block B on "ids"
  "hessian.B.SITE" float64 [n, n]     the Hessian of each input site SITE (attn_in, attn_out, mlp_in, mlp_hidden)
                                      of block B on "ids", with optima's scaling H = (2 / sequences) sum_t x_t x_t^T
                                      over the inputs x_t of the site's first linear layer in transformers
  "ids_short", "logits_short"         (phi3-longrope) a batch shorter than original_max_position_embeddings, which
                                      takes LongRoPE's short factors where "ids" takes the long ones

Give folder names to write only those:  .venv/bin/python scripts/make_model_goldens.py qwen3 phi3-longrope
Gemma goldens also hold "hidden" (the embedding output and each block's output on "ids") and "hessian.B.SITE" (each
input site's Hessian on "ids"), see block_captures; gemma3-mm (a multimodal checkpoint) holds only the text model's
logits. Names given as arguments rewrite only those folders.
"""
import json
import math
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "models")
VOCAB = 96


def configs():
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, max_position_embeddings=64)
    llama = dict(intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, **common)
    yield "opt", transformers.OPTConfig(ffn_dim=48, num_attention_heads=4, word_embed_proj_dim=32, **common)
    # OPT-350M's shape: post-LayerNorm, no final norm, project_in/project_out around the blocks.
    yield "opt-postln-proj", transformers.OPTConfig(ffn_dim=48, num_attention_heads=4, word_embed_proj_dim=16,
                                                    do_layer_norm_before=False, **common)
    yield "llama-gqa", transformers.LlamaConfig(tie_word_embeddings=False, rms_norm_eps=1e-5, **llama)
    yield "llama3-rope", transformers.LlamaConfig(
        tie_word_embeddings=True, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        rope_theta=500000.0, **llama)
    yield "mistral", transformers.MistralConfig(**llama)
    yield "qwen2", transformers.Qwen2Config(tie_word_embeddings=True, **llama)
    # Qwen3: per-head q/k RMSNorm, GQA, tied embeddings, head_dim 16 where hidden / heads is 8, and block 1 sliding
    # over the last 8 tokens (use_sliding_window, max_window_layers 1), which the 24-token ids exercise.
    yield "qwen3", transformers.Qwen3Config(
        tie_word_embeddings=True, head_dim=16, rope_theta=1000000.0, use_sliding_window=True, sliding_window=8,
        max_window_layers=1, **llama)
    # Phi-3: fused qkv_proj and gate_up_proj, LongRoPE with short and long factors (original context 16: the 24-token
    # ids and the 20-token perplexity windows take the long factors, ids_short the short ones), partial rotary (half
    # of each 16-wide head), a sliding window of 12, GQA with one kv head, an untied head. Weights 5x the usual
    # scale, so that attention is peaked enough for the choice of rotary factors to move the logits well past 1e-4.
    yield "phi3-longrope", transformers.Phi3Config(
        num_attention_heads=2, num_key_value_heads=1, intermediate_size=48, original_max_position_embeddings=16,
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.2, 1.5, 2.0],
                      "long_factor": [3.0, 4.5, 6.0, 12.0]},
        partial_rotary_factor=0.5, sliding_window=12, tie_word_embeddings=False, pad_token_id=None, bos_token_id=1,
        eos_token_id=2, initializer_range=0.1, **common)
    # LLaMA 3.2 1B/3B style: tied embeddings (no lm_head.weight stored) and LLaMA-3 rotary scaling with factor 32.
    yield "llama32-tied", transformers.LlamaConfig(
        tie_word_embeddings=True, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        rope_theta=500000.0, **llama)


# Models whose goldens also hold per-block hidden states and Hessians, with their own seeds, so that the list above
# can grow without reseeding them.
EXTENDED = {"qwen3": 1001, "phi3-longrope": 1002, "llama32-tied": 1003}
# The first linear layer of each input site, by its name within a block (all families' spellings).
SITE_OF = {"q_proj": "attn_in", "qkv_proj": "attn_in", "o_proj": "attn_out", "out_proj": "attn_out",
           "gate_proj": "mlp_in", "gate_up_proj": "mlp_in", "fc1": "mlp_in", "down_proj": "mlp_hidden",
           "fc2": "mlp_hidden"}


def blocks_and_hessians(model, ids):
    """{"hidden.B": block B's output, "hessian.B.SITE": H of that site} on ids, from hooks in transformers."""
    out, handles = {}, []
    layers = model.model.layers
    for b, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(
            lambda m, args, result, b=b: out.__setitem__(
                f"hidden.{b}", (result[0] if isinstance(result, tuple) else result).float().contiguous())))
        seen = set()
        for name, module in layer.named_modules():
            site = SITE_OF.get(name.split(".")[-1])
            if site is None or site in seen or not isinstance(module, torch.nn.Linear):
                continue
            seen.add(site)

            def hessian(m, args, b=b, site=site):
                x = args[0].double().reshape(-1, args[0].shape[-1])
                out[f"hessian.{b}.{site}"] = (2.0 / ids.shape[0]) * x.T @ x
            handles.append(module.register_forward_pre_hook(hessian))
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    # Gemma: head_dim other than hidden / heads, query_pre_attn_scalar other than head_dim, a sliding window shorter
    # than the test sequences, weights large enough that the soft-capping tanh is far from linear.
    gemma = dict(intermediate_size=48, num_attention_heads=4, head_dim=16, sliding_window=8,
                 query_pre_attn_scalar=24, initializer_range=0.2, **common)
    yield "gemma2", transformers.Gemma2Config(num_key_value_heads=2, attn_logit_softcapping=4.0,
                                              final_logit_softcapping=3.0, **dict(gemma, num_hidden_layers=3))
    # Gemma 3: layers sliding, full, sliding, full; linear rotary scaling on the full layers only; attention
    # soft-capping set (transformers' Gemma 3 attention does not apply it) and no final soft-capping.
    gemma3 = dict(gemma, num_hidden_layers=4, num_key_value_heads=1, sliding_window_pattern=2,
                  rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})
    yield "gemma3-text", transformers.Gemma3TextConfig(attn_logit_softcapping=1.0, **gemma3)
    yield "gemma3-text-untied", transformers.Gemma3TextConfig(tie_word_embeddings=False, final_logit_softcapping=6.0,
                                                              **dict(gemma3, num_key_value_heads=2))
    # Multimodal Gemma 3 (Gemma3ForConditionalGeneration) with a tiny vision tower: the text model's logits. An
    # untied head (saved as language_model.lm_head) and a final soft-capping in text_config, which the multimodal
    # model does not apply.
    yield "gemma3-mm", transformers.Gemma3Config(
        text_config=transformers.Gemma3TextConfig(final_logit_softcapping=2.0, **gemma3).to_dict(),
        vision_config=SIGLIP_TINY, mm_tokens_per_image=4, tie_word_embeddings=False, initializer_range=0.2)


# A vision tower of a few hundred parameters: one layer, 28x28 images in 14x14 patches.
SIGLIP_TINY = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                   num_attention_heads=2, image_size=28, patch_size=14)


def make_model(config):
    """The causal LM of `config`; a multimodal Gemma 3 config makes Gemma3ForConditionalGeneration."""
    if isinstance(config, transformers.Gemma3Config):
        for sub in (config, config.text_config, config.vision_config):
            sub._attn_implementation = "eager"
        return transformers.Gemma3ForConditionalGeneration(config).eval()
    config._attn_implementation = "eager"
    return transformers.AutoModelForCausalLM.from_config(config).eval()


# The input sites of a LLaMA-style block (q/k/v, o, gate/up, down) by the module whose input each is.
SITES = {"attn_in": "self_attn.q_proj", "attn_out": "self_attn.o_proj", "mlp_in": "mlp.gate_proj",
         "mlp_hidden": "mlp.down_proj"}


def block_captures(model, ids):
    """For families with LLaMA-style module names: "hidden" float32 [layers + 1, batch, seq, hidden] (the embedding
    output, then each block's output) and "hessian.B.SITE" float32, each input site's H = (2 / n) sum X^T X over
    the n sequences of `ids`, summed in float64, as optima accumulates it."""
    hidden, inputs, hooks = [], {}, []
    layers = model.model.layers
    hooks.append(model.model.embed_tokens.register_forward_hook(lambda m, i, o: hidden.append(o.detach())))
    for b, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(lambda m, i, o: hidden.append(
            (o[0] if isinstance(o, tuple) else o).detach())))
        for site, module in SITES.items():
            hooks.append(layer.get_submodule(module).register_forward_pre_hook(
                lambda m, i, key=f"hessian.{b}.{site}": inputs.setdefault(key, i[0].detach())))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    out = {"hidden": torch.stack(hidden).float().contiguous()}
    for key, x in inputs.items():
        x = x.double().reshape(-1, x.shape[-1])
        out[key] = (2.0 / ids.shape[0] * x.T @ x).float().contiguous()
    return out


def main():
    only = set(sys.argv[1:])  # names to (re)write; all when none are given
    torch.manual_seed(0)
    for seed, (name, config) in enumerate(configs()):
        if only and name not in only:
            continue
        seed = EXTENDED.get(name, seed)
        config._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = make_model(config)
        with torch.no_grad():  # non-trivial norms and biases, so a mix-up of them shows in the logits
            for pname, p in model.named_parameters():
                if p.ndim == 1:
                    p.uniform_(-1, 1) if pname.endswith("bias") else p.uniform_(0.5, 1.5)
        folder = os.path.join(OUT, name)
        shutil.rmtree(folder, ignore_errors=True)
        model.save_pretrained(folder)
        generator = torch.Generator().manual_seed(100 + seed)
        ids = torch.randint(0, VOCAB, (2, 24), generator=generator)
        seqlen = 20
        stream = torch.randint(0, VOCAB, (3 * seqlen + 7,), generator=generator)
        with torch.no_grad():
            logits = model(ids).logits.float()
            windows = stream[: (len(stream) // seqlen) * seqlen].view(-1, seqlen)
            window_logits = model(windows).logits.double()
            nll = torch.nn.functional.cross_entropy(window_logits[:, :-1].reshape(-1, VOCAB),
                                                    windows[:, 1:].reshape(-1), reduction="none")
            window_nll = nll.view(windows.shape[0], -1).mean(1)
        tensors = {"ids": ids, "logits": logits.contiguous(), "stream": stream, "window_nll": window_nll}
        if name in EXTENDED:
            tensors.update(blocks_and_hessians(model, ids))
            original = getattr(config, "original_max_position_embeddings", None)
            if config.model_type == "phi3" and original is not None:
                ids_short = torch.randint(0, VOCAB, (2, original - 4), generator=generator)
                with torch.no_grad():
                    tensors.update(ids_short=ids_short, logits_short=model(ids_short).logits.float().contiguous())
        if name.startswith("gemma") and hasattr(model.model, "layers"):
            tensors.update(block_captures(model, ids))
        save_file(tensors, os.path.join(folder, "golden.safetensors"))
        with open(os.path.join(folder, "golden.json"), "w") as f:
            json.dump({"seqlen": seqlen, "perplexity": math.exp(window_nll.mean().item()),
                       "transformers": transformers.__version__, "torch": torch.__version__}, f, indent=2)
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        print(f"{name}: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
