"""WikiText-2 perplexity of the FP model with Hugging Face transformers (the reference for qforge eval).

Same protocol as qforge eval and the GPTQ/AWQ papers: tokenize the whole file once with tokenizer(text),
non-overlapping windows of CTX tokens (the tail dropped), mean NLL over every predicted token.
Not run by CI.

The text is read as bytes and decoded as UTF-8 (no newline translation: the shared WikiText-2 file has
CRLF line ends, which Python's text mode would rewrite), exactly as qforge reads it. MODEL is a
directory written by `qforge convert` (its tokenizer.json carries SmolLM2's own pre-tokenizer, which
splits digits) or a .gguf file (transformers then builds a plain ByteLevel tokenizer that does not
split digits, so the windows differ from qforge's).

usage: python python/hf_perplexity.py MODEL_DIR|MODEL.gguf DATA.txt [--ctx 2048] [--max-windows N] [--json OUT]
"""
import argparse
import hashlib
import json
import math
import os
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if os.path.isdir(a.model):
        tok = AutoTokenizer.from_pretrained(a.model)
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    else:
        d, name = os.path.split(os.path.abspath(a.model))
        tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    with open(a.data, "rb") as f:
        text = f.read().decode("utf-8")
    ids = tok(text, return_tensors="pt").input_ids
    ids_sha = hashlib.sha256(ids[0].to(torch.int32).numpy().astype("<i4").tobytes()).hexdigest()
    print(f"{ids.shape[1]} tokens, sha256 of int32 ids {ids_sha}", flush=True)
    n_win = ids.shape[1] // a.ctx
    if a.max_windows:
        n_win = min(n_win, a.max_windows)
    s = s2 = 0.0
    n = 0
    t0 = time.time()
    for w in range(n_win):
        batch = ids[:, w * a.ctx:(w + 1) * a.ctx]
        with torch.no_grad():
            logits = model(batch).logits[0, :-1].double()
        nll = torch.nn.functional.cross_entropy(logits, batch[0, 1:], reduction="none")
        s += nll.sum().item()
        s2 += (nll * nll).sum().item()
        n += nll.numel()
        print(f"window {w + 1}/{n_win} ppl {math.exp(s / n):.4f} ({time.time() - t0:.0f}s)", flush=True)
    mean = s / n
    se = math.sqrt(max(0.0, s2 / n - mean * mean) / (n - 1))
    res = {"tokens_in_file": ids.shape[1], "ids_sha256": ids_sha, "windows": n_win, "ctx": a.ctx, "tokens_scored": n,
           "mean_nll": mean, "nll_stderr": se, "perplexity": math.exp(mean),
           "ppl_stderr": math.exp(mean) * se,
           "source": f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, float32"}
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
