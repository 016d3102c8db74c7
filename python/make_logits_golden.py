"""Golden logits of the FP reference model from Hugging Face transformers (not run by CI).

Loads SmolLM2-135M-Instruct from its GGUF file with transformers (gguf_file=, dequantized to float32),
runs fixed prompts, and writes tests/golden/logits_smollm2.json: the prompt token ids and, for every
position, logsumexp of the logits, the argmax, and the logits at a fixed set of vocabulary ids.

usage: python python/make_logits_golden.py MODEL.gguf tests/golden/logits_smollm2.json
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Quantization maps 16-bit weights to 4-bit integers; in 2023, AWQ and GPTQ",
    "<|im_start|>user\nWhat is 12 * 7?<|im_end|>\n<|im_start|>assistant\n",
]
# Fixed vocabulary ids whose logits are recorded at every position (spread over the vocabulary).
PROBE_IDS = [0, 1, 2, 17, 198, 253, 314, 355, 1000, 2113, 4040, 8192, 12345, 20000, 30001, 40000, 49151]


def main():
    gguf_path, out_path = sys.argv[1], sys.argv[2]
    d, name = os.path.split(os.path.abspath(gguf_path))
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    out = {
        "source": "transformers " + __import__("transformers").__version__ + ", torch " + torch.__version__
        + ", float32, attn_implementation=" + str(model.config._attn_implementation),
        "model": name,
        "probe_ids": PROBE_IDS,
        "prompts": [],
    }
    for p in PROMPTS:
        ids = tok(p, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        out["prompts"].append({
            "text": p,
            "ids": ids,
            "logsumexp": torch.logsumexp(logits, -1).tolist(),
            "argmax": logits.argmax(-1).tolist(),
            "max_abs_logit": logits.abs().max().item(),
            "probe_logits": logits[:, PROBE_IDS].tolist(),
        })
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
