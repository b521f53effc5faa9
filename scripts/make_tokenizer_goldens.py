#!/usr/bin/env python3
"""Writes the tokenizer parity goldens that tests/unit/test_tokenizer.cpp checks optima's C++ tokenizers against.

Dev-only: needs Hugging Face transformers, run by hand when a tokenizer or the goldens change; the C++ tests only read
its output. Versions used to write the committed files (install into a throwaway venv):

    python3 -m venv /tmp/tokvenv
    /tmp/tokvenv/bin/pip install transformers==5.23.0 tokenizers==0.23.3 sentencepiece==0.2.3 protobuf==7.36.2
    /tmp/tokvenv/bin/python scripts/make_tokenizer_goldens.py [--assets ../shared/assets] [--out tests/data/tokenizer]

Tokenizers (how transformers is asked for the reference ids):
    opt          AutoTokenizer(<assets>/tokenizers/opt)                  vocab.json + merges.txt, BOS </s>=2
    gpt2         GPT2Tokenizer(<assets>/tokenizers/gpt2)                 vocab.json + merges.txt, nothing added
    llama2       LlamaTokenizer(<assets>/tokenizers/llama2, add_bos_token=True)
                 (a bare tokenizer.model: optima adds BOS by default as Meta's Llama-2 tokenizer_config.json does;
                 transformers 5.x adds none when no tokenizer_config.json exists, hence the explicit flag)
    stories260k  AutoTokenizer(<assets>/models/stories260k)              tokenizer.model + config, legacy=true
    tiny_bpe     AutoTokenizer(tests/data/tokenizer/tiny_bpe)            a byte-level BPE of 1,000 tokens trained here
                 with `tokenizers` on asset text, written as tokenizer.json in the LLaMA-3 layout: Split(LLaMA-3
                 regex) + ByteLevel(use_regex=false), merges as [a, b] pairs, ignore_merges, special and non-special
                 added tokens (one with lstrip), TemplateProcessing "<|begin_of_text|> $A"
    gpt2_llama3  the GPT-2 vocabulary and merges in that same LLaMA-3 layout, with BOS <|endoftext|>=50256; too big
                 to store (about 2 MB), so the C++ test builds the identical tokenizer.json from the GPT-2 asset
                 files at run time (see build_gpt2_llama3_json here and in the test)

Corpora (paths relative to the assets folder). A file is read as UTF-8, every "\\r" is removed, it is split on "\\n"
and a final empty piece (from the file's last newline) is dropped; each line is encoded on its own with special tokens:
    wikitext     text/wikitext-2-raw/wiki.test.raw (2,891 rows); also "wikitext_joined": "\\n\\n".join(rows) encoded
                 as one text (the perplexity protocol)
    c4, code, technical, multilingual, wiki    text/calib/<name>.utf8
    tiny         text/tinystories/tiny.utf8 (contains <|endoftext|>)
    probes       short corner-case strings listed in PROBES below (written into the golden file in hex)

Golden file format: one file <out>/<tokenizer>.golden, UTF-8 text, one record a line, fields separated by one space:
    # ...                                   comment
    tokenizer <name>
    corpus <name> <path relative to assets, or "-" for probes> <mode: lines|joined> <number of lines>
    total <sum of token counts over all lines> <aggregate hash>
    line <index> <token count> <hash>       per-line records for the first DETAIL_LINES lines of the corpus
    ids <index> <id> <id> ...               the explicit ids of sampled lines (and of every probe)
    text <index> <hex>                      transformers' decode(ids, skip_special_tokens=True,
                                            clean_up_tokenization_spaces=False) of the same sampled line, as hex
    input <index> <hex>                     (probes only) the probe string, UTF-8 as hex
Hashes are 16 lowercase hex digits of 64-bit FNV-1a taken per id: h = 0xcbf29ce484222325; for each id:
h = ((h ^ (id mod 2^64)) * 0x100000001b3) mod 2^64. The aggregate hash is the same function applied to the sequence
of the per-line hashes (all lines, not only the detailed ones). Indices are 0-based line numbers.
"""

import argparse
import json
import os
import random
import sys
import tempfile

DETAIL_LINES = 400  # per-line records kept per corpus (the aggregate covers every line)
SAMPLES = 4  # lines per corpus whose ids are stored explicitly
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK = (1 << 64) - 1

CORPORA = [
    ("wikitext", "text/wikitext-2-raw/wiki.test.raw"),
    ("c4", "text/calib/c4.utf8"),
    ("code", "text/calib/code.utf8"),
    ("technical", "text/calib/technical.utf8"),
    ("multilingual", "text/calib/multilingual.utf8"),
    ("wiki", "text/calib/wiki.utf8"),
    ("tiny", "text/tinystories/tiny.utf8"),
]

PROBES = [
    "",
    " ",
    "   ",
    "\n",
    "\n\n\n",
    "Hello, my dog is cute",
    " Hello  world\n\n x",
    "  leading spaces and trailing   ",
    "tabs\tand\r\nwindows newlines",
    "I'm sure you'll see they've done it; she'd've. DON'T SHOUT'S",
    "numbers 1234567 3.14159 1,000,000 and 2023-10-01",
    "emoji 😀👍🏽 and flags 🇩🇪 and zwj 👨‍👩‍👧",
    "中文分词测试，日本語のテキスト、한국어 텍스트",
    "Ünïcödé naïve café — “quotes” ‘single’ … ½ ² ﬁ",
    "Ελληνικά кириллица עברית العربية हिन्दी",
    "x<|endoftext|>y <|endoftext|> z",
    "a</s>b<s> c<pad>d<unk>",
    "<s>Hello <s>World</s>",
    "<|begin_of_text|>Hi<|end_of_text|> and <tool>call</tool>",
    "text   <mask> masked",
    "def f(x):\n    return x**2  # comment\n\tpass",
    "▁already ▁meta",
    "\u00a0non-breaking\u2009thin\u3000ideographic",
    "a" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]

# LLaMA-3's pre-tokenizer split regex.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def fnv(values):
    h = FNV_OFFSET
    for v in values:
        h = ((h ^ (v & MASK)) * FNV_PRIME) & MASK
    return h


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        text = f.read().replace("\r", "")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def llama3_layout(vocab, merges, added, bos):
    """A tokenizers.Tokenizer in the LLaMA-3 layout over the given byte-level vocabulary and merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens(added)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
            ),
        ]
    )
    return tok


def build_tiny_bpe(assets, out_dir):
    """Trains the stored tiny_bpe fixture (deterministic for a given tokenizers version)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

    text = []
    for rel, n in [("text/tinystories/tiny.utf8", 400), ("text/calib/wiki.utf8", 300), ("text/calib/code.utf8", 300),
                   ("text/calib/multilingual.utf8", 100)]:
        text += read_lines(os.path.join(assets, rel))[:n]
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(__import__("tokenizers").Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    trainer_tok.train_from_iterator(text, trainer)
    model = json.loads(trainer_tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    added = [
        AddedToken("<|begin_of_text|>", special=True, normalized=False),
        AddedToken("<|end_of_text|>", special=True, normalized=False),
        AddedToken("<mask>", special=True, normalized=False, lstrip=True),
        AddedToken("<tool>", special=False, normalized=False),
        AddedToken("</tool>", special=False, normalized=False),
    ]
    tok = llama3_layout(model["vocab"], merges, added, "<|begin_of_text|>")
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                   "eos_token": "<|end_of_text|>"}, f, indent=2)


def build_gpt2_llama3(assets, out_dir):
    """GPT-2's vocabulary in the LLaMA-3 layout; test_tokenizer.cpp builds the same tokenizer.json."""
    from tokenizers import AddedToken

    with open(os.path.join(assets, "tokenizers/gpt2/vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    merges = []
    with open(os.path.join(assets, "tokenizers/gpt2/merges.txt"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.rstrip("\n")
            if (i == 0 and line.startswith("#version")) or not line:
                continue
            a, b = line.split(" ")
            merges.append((a, b))
    tok = llama3_layout(vocab, merges, [AddedToken("<|endoftext|>", special=True, normalized=False)], "<|endoftext|>")
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
                   "eos_token": "<|endoftext|>"}, f)


def load_tokenizers(assets, out, tmp):
    from transformers import AutoTokenizer, GPT2Tokenizer, LlamaTokenizer

    return {
        "opt": AutoTokenizer.from_pretrained(os.path.join(assets, "tokenizers/opt")),
        "gpt2": GPT2Tokenizer.from_pretrained(os.path.join(assets, "tokenizers/gpt2")),
        "llama2": LlamaTokenizer.from_pretrained(os.path.join(assets, "tokenizers/llama2"), add_bos_token=True),
        "stories260k": AutoTokenizer.from_pretrained(os.path.join(assets, "models/stories260k")),
        "tiny_bpe": AutoTokenizer.from_pretrained(os.path.join(out, "tiny_bpe")),
        "gpt2_llama3": AutoTokenizer.from_pretrained(tmp),
    }


def encode_all(tok, texts):
    return tok(texts, add_special_tokens=True)["input_ids"] if texts else []


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def write_corpus(f, tok, name, rel, mode, texts, sample_idx):
    ids_list = encode_all(tok, texts)
    hashes = [fnv(ids) for ids in ids_list]
    f.write(f"corpus {name} {rel} {mode} {len(texts)}\n")
    f.write(f"total {sum(len(x) for x in ids_list)} {fnv(hashes):016x}\n")
    for i in range(min(DETAIL_LINES, len(texts))):
        f.write(f"line {i} {len(ids_list[i])} {hashes[i]:016x}\n")
    for i in sample_idx:
        f.write(f"ids {i} " + " ".join(str(x) for x in ids_list[i]) + "\n")
        f.write(f"text {i} {decode(tok, ids_list[i]).encode('utf-8').hex()}\n")
        if rel == "-":
            f.write(f"input {i} {texts[i].encode('utf-8').hex()}\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--assets", default=os.path.join(here, "..", "..", "shared", "assets"))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data", "tokenizer"))
    args = ap.parse_args()
    import tokenizers
    import transformers

    build_tiny_bpe(args.assets, os.path.join(args.out, "tiny_bpe"))
    corpora = [(name, rel, read_lines(os.path.join(args.assets, rel))) for name, rel in CORPORA]
    with tempfile.TemporaryDirectory() as tmp:
        build_gpt2_llama3(args.assets, tmp)
        toks = load_tokenizers(args.assets, args.out, tmp)
        for tname, tok in toks.items():
            path = os.path.join(args.out, f"{tname}.golden")
            with open(path, "w", encoding="utf-8") as f:
                f.write(f"# written by scripts/make_tokenizer_goldens.py with transformers {transformers.__version__},"
                        f" tokenizers {tokenizers.__version__}; format documented there\n")
                f.write(f"tokenizer {tname}\n")
                for name, rel, lines in corpora:
                    rng = random.Random(f"{tname}/{name}")
                    short = [i for i, l in enumerate(lines) if 0 < len(l) <= 400]
                    sample_idx = sorted(set([0] + rng.sample(short, min(SAMPLES - 1, len(short)))))
                    write_corpus(f, tok, name, rel, "lines", lines, sample_idx)
                    if name == "wikitext":
                        write_corpus(f, tok, "wikitext_joined", rel, "joined", ["\n\n".join(lines)], [])
                write_corpus(f, tok, "probes", "-", "lines", PROBES, list(range(len(PROBES))))
            print(f"{path}: {os.path.getsize(path)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
