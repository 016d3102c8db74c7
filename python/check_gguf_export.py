#!/usr/bin/env python3
"""Checks a GGUF exported by qforge (`save_gguf_checkpoint`, `qforge quantize --format gguf`) against a
Hugging Face directory holding the same model's dequantized f32 weights.

Written from the GGUF spec and the reference `gguf` package (gguf-py), not from qforge's C++: every tensor
is read with gguf.GGUFReader and dequantized with gguf.quants.dequantize; q/k rows are put back from
llama.cpp's RoPE order (convert_hf_to_gguf.py LlamaModel.permute) into Hugging Face order.

Bounds, per element, against the Hugging Face value w (whose linears are (q - zero) * scale in f32):
  F32   exact.
  F16   equal to w rounded to fp16 (round to nearest even), i.e. |diff| <= half an fp16 ulp of w.
  Q4_0  exact: value (q - 8) * d with d the fp16-exact scale; the product is exact in f32.
  Q4_1  value q * d + m with m = fp16(-zero * scale): |diff| <= half an fp16 ulp of the block's stored m
        (the one rounding of the export; zero * scale itself is exact in f32) + half an f32 ulp of the
        result (the rounding of q * d + m). "Half an ulp" of a stored value is half the larger gap to its
        neighbours, so the bound holds when m rounded to a power of two from the binade above.
Other types are compared exactly.

usage: python python/check_gguf_export.py MODEL.gguf HF_DIR
Needs: numpy, safetensors, gguf (pip install numpy safetensors gguf). Exits 1 on any violation or on a
tensor present on one side only.
"""
from __future__ import annotations

import glob
import os
import re
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file

LINEARS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
OTHER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def hf_name(gguf_name: str) -> str | None:
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if gguf_name in top:
        return top[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if not m:
        return None
    layer, stem, kind = m.groups()
    base = LINEARS.get(stem) or OTHER.get(stem)
    return f"model.layers.{layer}.{base}.{kind}" if base else None


def field_int(reader: GGUFReader, key: str) -> int:
    f = reader.fields[key]
    return int(f.parts[f.data[0]][0])


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's convert permute: w.reshape(n_head, 2, hd/2, ...).swapaxes(1, 2)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def half_ulp(x: np.ndarray, dtype) -> np.ndarray:
    """Half the larger of the gaps to x's two neighbours in `dtype`: bounds the rounding error of any real
    that rounds to x (a power of two has a smaller gap below than above)."""
    x = np.asarray(x).astype(dtype)
    up = np.abs(np.nextafter(x, np.array(np.inf, dtype)).astype(np.float64) - x.astype(np.float64))
    down = np.abs(x.astype(np.float64) - np.nextafter(x, np.array(-np.inf, dtype)).astype(np.float64))
    return np.maximum(up, down) / 2


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    path, hf_dir = sys.argv[1], sys.argv[2]
    reader = GGUFReader(path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    n_head = field_int(reader, f"{arch}.attention.head_count")
    n_head_kv = field_int(reader, f"{arch}.attention.head_count_kv")
    hf: dict[str, np.ndarray] = {}
    for f in sorted(glob.glob(os.path.join(hf_dir, "*.safetensors"))):
        hf.update(load_file(f))
    if not hf:
        print(f"{hf_dir}: no *.safetensors files")
        return 2

    failures = 0
    seen = set()
    worst_q4_1 = 0.0
    print(f"{'tensor':40s} {'type':5s} {'shape':>14s} {'max|diff|':>11s} {'max diff/bound':>14s}")
    for t in reader.tensors:
        name = hf_name(t.name)
        if t.name == "rope_freqs.weight":
            continue  # llama.cpp's Llama-3 rope factors: no Hugging Face tensor
        if name is None or name not in hf:
            print(f"{t.name}: no Hugging Face tensor ({name})")
            failures += 1
            continue
        seen.add(name)
        qtype = Q(t.tensor_type)
        got = dequantize(t.data, qtype).astype(np.float32)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        got = got.reshape(shape)
        want = hf[name].astype(np.float32).reshape(shape)
        # Bound per element, in GGUF row order.
        if qtype == Q.Q4_1:
            blocks = np.asarray(t.data, dtype=np.uint8).reshape(shape[0] if len(shape) > 1 else 1, -1, 20)
            m = blocks[:, :, 2:4].copy().view(np.float16).reshape(blocks.shape[0], -1).astype(np.float32)
            m_err = np.repeat(half_ulp(m, np.float16), 32, axis=1)
            bound = m_err.reshape(shape) + half_ulp(got, np.float32)
        elif qtype == Q.F16:
            bound = half_ulp(want, np.float16)
        else:
            bound = np.zeros(shape)
        stem = t.name.split(".")[2] if t.name.startswith("blk.") else ""
        if stem in ("attn_q", "attn_k"):
            heads = n_head if stem == "attn_q" else n_head_kv
            got = unpermute(got, heads)
            bound = unpermute(bound, heads)
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        if qtype == Q.F16:
            ok = np.array_equal(got, want.astype(np.float16).astype(np.float32))
        else:
            ok = bool(np.all(diff <= bound))
        ratio = float(np.max(diff / np.where(bound > 0, bound, 1))) if np.any(bound > 0) else float(diff.max() > 0)
        if qtype == Q.Q4_1:
            worst_q4_1 = max(worst_q4_1, float(diff.max()))
        print(f"{t.name:40s} {qtype.name:5s} {str(shape):>14s} {diff.max():11.3g} {ratio:14.3f} "
              f"{'ok' if ok else 'FAIL'}")
        failures += 0 if ok else 1
    tied = "output.weight" not in {t.name for t in reader.tensors}
    for name in sorted(set(hf) - seen):
        if tied and name == "lm_head.weight":
            continue
        print(f"{name}: in {hf_dir} but not in {path}")
        failures += 1
    print(f"Q4_1 max |diff| {worst_q4_1:.3g}")
    print("OK" if failures == 0 else f"{failures} FAILURES")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
