#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/), small valid and near-valid inputs
that start libFuzzer on the formats' structure rather than on random bytes.

Run from anywhere: python3 tests/fuzz/make_corpus.py. The output is committed; rerun after changing this script.
Only the Python standard library is used, and nothing is copied from the offline assets.
"""
import json
import shutil
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CORPUS = HERE / "corpus"


def write(target, name, data):
    path = CORPUS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))


# --- safetensors -------------------------------------------------------------------------------------------------
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}


def safetensors(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape)]; data bytes are a counting pattern."""
    header, offset = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = SIZES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(i % 251 for i in range(offset))


def safetensors_seeds():
    t = "safetensors_header"
    write(t, "empty_header", safetensors([]))
    write(t, "one_f32", safetensors([("w", "F32", [2, 3])], {"format": "pt"}))
    write(t, "mixed_dtypes", safetensors([("a.weight", "F64", [2]), ("b", "BF16", [3, 1]), ("c", "U8", [5]),
                                          ("d", "BOOL", [2, 2]), ("e", "I64", [1])]))
    write(t, "zero_dims", safetensors([("scalar", "F32", []), ("empty", "F16", [0, 4]), ("x", "I32", [1, 1, 1])]))
    write(t, "unpadded", safetensors([("model.layers.0.q_proj.weight", "F16", [4, 4])], pad=False))
    # Near misses: an overlap, and a header length past the end.
    bad = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                      "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    write(t, "overlap", struct.pack("<Q", len(bad)) + bad + b"\0" * 4)
    write(t, "short_length", struct.pack("<Q", 1000) + b"{}")


# --- config.json -------------------------------------------------------------------------------------------------
def config_seeds():
    t = "model_config"
    for cfg in sorted((REPO / "tests/data/models").glob("*/config.json")):
        write(t, cfg.parent.name, cfg.read_bytes())
    write(t, "llama_rope_scaling", json.dumps({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
        "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512, "max_position_embeddings": 256,
        "rope_theta": 500000.0, "head_dim": 8, "attention_bias": True, "mlp_bias": False,
        "rope_scaling": {"type": "linear", "factor": 2.0}}))
    write(t, "llama3_rope_parameters", json.dumps({
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 100,
        "max_position_embeddings": 128, "tie_word_embeddings": True, "hidden_act": "silu",
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}))
    write(t, "gemma3_legacy_rope", json.dumps({
        "model_type": "gemma3_text", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 7,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 100,
        "max_position_embeddings": 128, "sliding_window": 8, "sliding_window_pattern": 3, "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "query_pre_attn_scalar": 16, "final_logit_softcapping": None, "hidden_activation": "gelu_pytorch_tanh"}))
    write(t, "opt_minimal", json.dumps({
        "model_type": "opt", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "ffn_dim": 32,
        "vocab_size": 50, "max_position_embeddings": 64, "word_embed_proj_dim": 8, "do_layer_norm_before": False}))
    write(t, "wrong_types", json.dumps({"model_type": "qwen2", "hidden_size": "64", "num_hidden_layers": 1.5,
                                        "tie_word_embeddings": 1, "rope_parameters": None}))


# --- tokenizer.json ----------------------------------------------------------------------------------------------
def byte_to_unicode():
    """GPT-2's map from bytes to printable code points (printable Latin-1 stays, the rest moves to 256+)."""
    direct = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {}, 0
    for b in range(256):
        if b in direct:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tiny_bpe(all_bytes):
    b2u = byte_to_unicode()
    alphabet = range(256) if all_bytes else [ord(c) for c in " abdehilnorstw.,!'\n0123456789"]
    vocab = {b2u[b]: i for i, b in enumerate(alphabet)}
    merges = []
    for word in ["Ġthe", "Ġhello", "Ġworld", "in", "er", "'s", "ĠĠ", "12"]:
        # merge left to right: "Ġ" + "t" -> "Ġt", then + "h" ...
        chars = list(word)
        acc = chars[0]
        for ch in chars[1:]:
            if acc not in vocab or ch not in vocab:
                break
            merges.append(f"{acc} {ch}")
            acc += ch
            vocab.setdefault(acc, len(vocab))
    return vocab, merges


def tokenizer_json(vocab, merges, pre_tokenizer, post_processor=None, added=(), merges_as_pairs=False, **model):
    m = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
         "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
         "vocab": vocab, "merges": [m.split(" ") for m in merges] if merges_as_pairs else merges}
    m.update(model)
    return json.dumps({"version": "1.0", "truncation": None, "padding": None, "added_tokens": list(added),
                       "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": post_processor,
                       "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                   "use_regex": True}, "model": m}, separators=(",", ":"))


def added_token(i, content, special=True, lstrip=False, rstrip=False):
    return {"id": i, "content": content, "single_word": False, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": False, "special": special}


def tokenizer_seeds():
    t = "bpe_tokenizer_json"
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    split_seq = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"(?i:'s|'t)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|\s+(?!\S)|\s+"},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    vocab, merges = tiny_bpe(all_bytes=False)
    n = len(vocab)
    eot = added_token(n, "<|endoftext|>")
    template = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [n + 1], "tokens": ["<s>"]},
                                               "</s>": {"id": "</s>", "ids": [n + 2], "tokens": ["</s>"]}}}
    specials = [eot, added_token(n + 1, "<s>"), added_token(n + 2, "</s>"), added_token(n + 3, "<mask>", lstrip=True),
                added_token(n + 4, "<tool>", special=False, rstrip=True)]
    config = json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True},
                         "add_bos_token": True, "add_prefix_space": False,
                         "added_tokens_decoder": {str(n + 3): {"content": "<mask>", "lstrip": True, "special": True}}})
    text = "Hello world, it's 12 <mask> the <tool>x</s>\n\n  end"
    write(t, "byte_level", tokenizer_json(vocab, merges, byte_level, added=[eot]))
    write(t, "split_sequence_template",
          tokenizer_json(vocab, merges, split_seq, {"type": "Sequence", "processors": [
              {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}, template]},
              added=specials, merges_as_pairs=True, ignore_merges=True))
    write(t, "with_config_and_text",
          tokenizer_json(vocab, merges, byte_level, template, added=specials) + "\0" + config + "\0" + text)
    write(t, "unk_fuse", tokenizer_json(dict(vocab, **{"<unk>": n}), merges, dict(byte_level, add_prefix_space=True),
                                        unk_token="<unk>", fuse_unk=True).encode() + b"\0\0caf\xc3\xa9 \xff!")
    vocab_all, merges_all = tiny_bpe(all_bytes=True)
    write(t, "all_bytes", tokenizer_json(vocab_all, merges_all, {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": " "}, "behavior": "Isolated", "invert": False},
        dict(byte_level, use_regex=False)]}))


# --- text for encoding -------------------------------------------------------------------------------------------
def text_seeds():
    t = "bpe_encode"
    write(t, "english", "The quick brown fox jumps over the lazy dog. It's 3:45pm, isn't it? We'll see...\n\n"
                        "  Indented  text\twith\ttabs and trailing spaces   \r\n")
    write(t, "code", "def f(x):\n    return x ** 2  # square\n\nif __name__ == '__main__':\n    print(f(12345))\n")
    write(t, "unicode", "Gr\u00fc\u00dfe, na\u00efve caf\u00e9; \u65e5\u672c\u8a9e\u306e\u6587\u7ae0; "
                        "\u0639\u0631\u0628\u064a; \U0001F600\U0001F44D\u200d; \u00a0nbsp\u3000ideographic")
    write(t, "ill_formed", b"valid \xff\xfe \xc0\xaf \xe2\x82 \xed\xa0\x80 \xf4\x90\x80\x80 \xf0\x9f\x98 end\x80")
    write(t, "specials", "<|endoftext|>Hello<|begin_of_text|> <mask>  x <tool>call</tool> <|end_of_text|>")
    write(t, "numbers", "1234567890 3.14159 -42 1e10 0x1F 1,000,000 12345678901234567890")


def main():
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    safetensors_seeds()
    config_seeds()
    tokenizer_seeds()
    text_seeds()
    for d in sorted(CORPUS.iterdir()):
        files = list(d.iterdir())
        print(f"{d.name}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
