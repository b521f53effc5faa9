#!/usr/bin/env python3
"""Writes calibration golden files under tests/data/calibration/: windows drawn from the offline C4 stand-in by the
reference scripts' sampling code (Python's `random`, transformers' OPT tokenizer), and by optima's documented
"concatenated" rule for documents shorter than seqlen. tests/unit/test_calibration.cpp requires optima's
windows to be identical. Development tool; run from the repository root:
    .venv/bin/python scripts/make_calibration_goldens.py
"""
import os
import random

import numpy as np
import transformers

ASSETS = os.environ.get("OPTIMA_ASSETS", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "assets"))
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "calibration")


def reference(docs, tokenizer, nsamples, seqlen, seed):
    """The reference get_c4 loop (SparseGPT/Wanda/OPTIMA), on a list of documents."""
    random.seed(seed)
    windows = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(docs) - 1)
            ids = tokenizer(docs[i])["input_ids"]
            if len(ids) > seqlen:
                break
        start = random.randint(0, len(ids) - seqlen - 1)
        windows.append(ids[start:start + seqlen])
    return np.array(windows, dtype=np.int64)


def concatenated(docs, tokenizer, nsamples, seqlen, seed):
    """optima's rule when no document is long enough: documents joined with EOS, windows drawn from the stream."""
    stream = []
    for i, doc in enumerate(docs):
        if i:
            stream.append(tokenizer.eos_token_id)
        stream.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
    random.seed(seed)
    starts = [random.randint(0, len(stream) - seqlen - 1) for _ in range(nsamples)]
    return np.array([stream[s:s + seqlen] for s in starts], dtype=np.int64)


def main():
    os.makedirs(OUT, exist_ok=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(ASSETS, "tokenizers", "opt"))
    with open(os.path.join(ASSETS, "text", "calib", "c4.utf8"), encoding="utf-8") as f:
        docs = [line.rstrip("\r\n") for line in f if line.strip()]
    lengths = [len(tokenizer(d)["input_ids"]) for d in docs]
    print(f"{len(docs)} documents, longest {max(lengths)} tokens")
    np.save(os.path.join(OUT, "c4_opt_reference_n8_l256_seed0.npy"), reference(docs, tokenizer, 8, 256, 0))
    np.save(os.path.join(OUT, "c4_opt_reference_n5_l512_seed7.npy"), reference(docs, tokenizer, 5, 512, 7))
    long = max(lengths) + 100
    np.save(os.path.join(OUT, f"c4_opt_concatenated_n4_l{long}_seed0.npy"), concatenated(docs, tokenizer, 4, long, 0))
    print(f"wrote goldens to {OUT} (concatenated seqlen {long})")


if __name__ == "__main__":
    main()
