"""Checks that transformers loads a directory written by `qforge convert` (not run by CI).

Loads the converted directory and the original GGUF with transformers, compares the logits of both on
a few prompts and the token ids of the two tokenizers on the whole WikiText-2 test file.

usage: python python/check_converted.py CONVERTED_DIR MODEL.gguf WIKITEXT.txt
"""
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    conv, gguf, wiki = sys.argv[1], sys.argv[2], sys.argv[3]
    d, name = os.path.split(os.path.abspath(gguf))
    torch.set_num_threads(2)
    tok_c = AutoTokenizer.from_pretrained(conv)
    tok_g = AutoTokenizer.from_pretrained(d, gguf_file=name)
    m_c = AutoModelForCausalLM.from_pretrained(conv, dtype=torch.float32).eval()
    m_g = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    with open(wiki, "rb") as f:  # bytes: no newline translation of the CRLF file
        text = f.read().decode("utf-8")
    ids_c = tok_c(text)["input_ids"]
    ids_g = tok_g(text)["input_ids"]
    # transformers' GGUF loader builds a plain ByteLevel tokenizer (no digit splitting), while the
    # converted tokenizer.json keeps SmolLM2's Digits(individual) pre-tokenizer: the ids may differ there.
    print(f"wikitext tokens: converted {len(ids_c)}, transformers-from-gguf {len(ids_g)}")
    worst = 0.0
    for p in ["The capital of France is", "def f(x):\n    return x * 2  # 123", "Ünïcödé — emoji 🚀!"]:
        ids = torch.tensor([tok_c(p)["input_ids"]])
        with torch.no_grad():
            a = m_c(ids).logits
            b = m_g(ids).logits
        worst = max(worst, (a - b).abs().max().item())
    print(f"max |logit(converted) - logit(gguf)| = {worst:.3g}")
    ok = worst == 0.0
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
