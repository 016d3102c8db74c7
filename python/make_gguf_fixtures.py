#!/usr/bin/env python3
"""Writes the GGUF test fixtures of tests/formats/gguf_test.cpp with the reference `gguf` package.

Run with a Python that has gguf (0.19) and numpy:
    /tmp/pyref/bin/python python/make_gguf_fixtures.py [--model PATH]

Outputs (all under tests/data/gguf/):
  small.gguf          metadata of every value type (nested array included), general.alignment = 64,
                      and one tensor per supported ggml type, from seeded random data.
  small_dequant.bin   the reference dequantization (gguf.quants.dequantize of the tensors as read back
                      by gguf.GGUFReader). Format, little-endian, repeated once per tensor in file order:
                        u32 name_len, name bytes (utf-8),
                        u32 rank, u64 dims[rank]   (row-major shape, ne reversed),
                        f32 values[prod(dims)]
  model_golden.json   facts about the default model (SmolLM2-135M-Instruct.Q4_1.gguf) and, for a few of
                      its tensors, exact checksums of the reference dequantization (see model_golden()).

The fixture is deterministic (seeded); rerunning rewrites identical files.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "data" / "gguf"
QK_K = 256


def fp16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8).reshape(-1, 2)


def craft_q4_k(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Raw Q4_K blocks (the package cannot quantize Q4_K): fp16 d, fp16 dmin, 12 bytes of packed
    6-bit scales/mins, 128 bytes of nibbles. Every bit of scales/qs is random; d/dmin are finite."""
    n = rows * cols // QK_K
    d = fp16_bytes(rng.normal(0.0, 0.01, n))
    dmin = fp16_bytes(np.abs(rng.normal(0.0, 0.01, n)))
    scales = rng.integers(0, 256, (n, 12), dtype=np.uint8)
    qs = rng.integers(0, 256, (n, 128), dtype=np.uint8)
    blocks = np.concatenate([d, dmin, scales, qs], axis=1)
    assert blocks.shape[1] == 144
    return blocks.reshape(rows, cols // QK_K * 144)


def craft_q6_k(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Raw Q6_K blocks: ql[128], qh[64], int8 scales[16], fp16 d; all bits random, d finite."""
    n = rows * cols // QK_K
    ql = rng.integers(0, 256, (n, 128), dtype=np.uint8)
    qh = rng.integers(0, 256, (n, 64), dtype=np.uint8)
    scales = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    d = fp16_bytes(rng.normal(0.0, 0.01, n))
    blocks = np.concatenate([ql, qh, scales, d], axis=1)
    assert blocks.shape[1] == 210
    return blocks.reshape(rows, cols // QK_K * 210)


def make_small(path: Path, golden_path: Path) -> None:
    rng = np.random.default_rng(20240607)
    w = gguf.GGUFWriter(str(path), arch="qftest")
    w.add_custom_alignment(64)
    # Scalars of every type (values the C++ test asserts).
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.15625)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "h\u00e9llo gguf")
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float64("test.f64", 1.0 / 3.0)
    # Arrays.
    w.add_array("test.array_str", ["alpha", "beta", "", "gamma"])
    w.add_array("test.array_int", [1, -2, 3])  # int32 elements
    w.add_key_value("test.array_u8", [7, 8, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("test.array_u64", [2**64 - 1, 2], V.ARRAY, sub_type=V.UINT64)
    w.add_array("test.array_f32", [0.5, -1.25])
    w.add_array("test.array_bool", [True, False])
    w.add_array("test.array_nested", [[1, 2], [3]])  # array of arrays of int32

    tensors: list[tuple[str, np.ndarray, Q]] = []

    f32 = rng.normal(0, 1, (3, 8)).astype(np.float32)
    f32.flat[:6] = np.array([-0.0, np.inf, -np.inf, np.nan, 1e-45, 3.0e38], dtype=np.float32)
    tensors.append(("t.f32", f32, Q.F32))
    tensors.append(("t.f32_1d", rng.normal(0, 1, (5,)).astype(np.float32), Q.F32))

    f16 = rng.normal(0, 1, (4, 16)).astype(np.float16)
    f16.flat[:7] = np.array([-0.0, np.inf, -np.inf, np.nan, 2.0**-24, 65504.0, -2.0**-14], dtype=np.float16)
    tensors.append(("t.f16", f16, Q.F16))

    bf16 = gguf.quants.quantize(rng.normal(0, 1, (2, 32)).astype(np.float32), Q.BF16)
    tensors.append(("t.bf16", bf16, Q.BF16))

    for name, qt, shape in [("t.q8_0", Q.Q8_0, (4, 64)), ("t.q4_0", Q.Q4_0, (4, 64)),
                            ("t.q4_1", Q.Q4_1, (4, 64)), ("t.q8_0_3d", Q.Q8_0, (2, 3, 64))]:
        x = rng.normal(0, 1, shape).astype(np.float32)
        tensors.append((name, gguf.quants.quantize(x, qt), qt))
    tensors.append(("t.q4_k", craft_q4_k(rng, 2, 512), Q.Q4_K))
    tensors.append(("t.q6_k", craft_q6_k(rng, 2, 512), Q.Q6_K))

    for name, data, qt in tensors:
        if qt in (Q.F32, Q.F16):
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Golden: read the file back with the reference reader and dequantize.
    r = gguf.GGUFReader(str(path))
    assert r.alignment == 64
    with open(golden_path, "wb") as g:
        for t in r.tensors:
            deq = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            shape = [int(s) for s in reversed(t.shape.tolist())]  # ne reversed
            assert deq.size == int(np.prod(shape)), (t.name, deq.shape, shape)
            name = t.name.encode()
            g.write(struct.pack("<I", len(name)) + name)
            g.write(struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", s) for s in shape))
            g.write(deq.astype("<f4").tobytes())
    print(f"wrote {path} ({path.stat().st_size} bytes), {golden_path} ({golden_path.stat().st_size} bytes)")


def checksums(x: np.ndarray) -> dict:
    """Exact, order-sensitive checksums of an f32 array: over its bit patterns u (as uint64),
    bit_sum = sum(u) mod 2^64 and weighted_sum = sum(u * (i + 1)) mod 2^64, i the flat index."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).ravel().astype(np.uint64)
    idx = np.arange(1, u.size + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bit_sum = int(u.sum(dtype=np.uint64))
        weighted = int((u * idx).sum(dtype=np.uint64))
    return {"bit_sum": bit_sum, "weighted_sum": weighted}


def model_golden(model: Path, out: Path) -> None:
    r = gguf.GGUFReader(str(model))
    counts = collections.Counter(t.tensor_type.name for t in r.tensors)
    fields = r.fields
    info = {
        "file": model.name,
        "version": int(fields["GGUF.version"].parts[-1][0]),
        "tensor_count": len(r.tensors),
        "kv_count": int(fields["GGUF.kv_count"].parts[-1][0]),
        "alignment": int(r.alignment),
        "tensor_types": dict(sorted(counts.items())),
        "architecture": str(fields["general.architecture"].contents()),
        "block_count": int(fields["llama.block_count"].contents()),
        "vocab_size": len(fields["tokenizer.ggml.tokens"].data),
        "tensors": {},
    }
    picks = [0, 1, 2, 31, 32, 575, 576, 12345, 1000003]
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_norm.weight"]:
        t = next(t for t in r.tensors if t.name == name)
        deq = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).ravel()
        shape = [int(s) for s in reversed(t.shape.tolist())]
        idx = [i for i in picks if i < deq.size] + [deq.size - 1]
        info["tensors"][name] = {
            "type": t.tensor_type.name,
            "shape": shape,
            "data_offset": int(t.data_offset),
            "n_bytes": int(t.n_bytes),
            **checksums(deq),
            # float64 sum for a readable sanity number; compared with a bound, not exactly.
            "sum": float(deq.astype(np.float64).sum()),
            "sum_abs": float(np.abs(deq.astype(np.float64)).sum()),
            "elements": [{"index": i, "bits": int(deq[i:i + 1].view(np.uint32)[0]), "value": float(deq[i])}
                         for i in idx],
        }
    out.write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {out}")


def default_model_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.environ["HOME"], ".cache")
    return Path(cache) / "qforge" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=default_model_path(),
                    help="default model (for model_golden.json)")
    args = ap.parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    make_small(OUT_DIR / "small.gguf", OUT_DIR / "small_dequant.bin")
    if args.model.exists():
        model_golden(args.model, OUT_DIR / "model_golden.json")
    else:
        print(f"model not found: {args.model} (run scripts/setup.sh); "
              "model_golden.json not rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
