#!/usr/bin/env python3
"""Writes the safetensors compatibility fixture read by tests/formats/safetensors_test.cpp.

Outputs (small, checked in):
  tests/data/safetensors/ref.safetensors   written by the reference implementation (safetensors.torch)
  tests/data/safetensors/ref_golden.json   per tensor: dtype, shape, data_offsets, exact sum, first values

Run from anywhere:  /tmp/pyref/bin/python python/make_safetensors_fixture.py
Values come from a seeded torch generator; the golden file is computed from the tensors themselves, so a
regenerated fixture stays self-consistent even if the generator's stream changes.
"""
import json
import math
import pathlib

import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "safetensors"
N_FIRST = 4  # leading values recorded per tensor

# Only one metadata key: the reference keeps metadata in a HashMap, so with several keys its header
# order (and the file's bytes) would not be reproducible.
METADATA = {"format": "pt"}


def make_tensors():
    g = torch.Generator().manual_seed(20240611)
    return {
        "model.embed.weight": torch.randn(4, 8, generator=g, dtype=torch.float32),
        "model.layers.0.mlp.weight": torch.randn(3, 5, generator=g).to(torch.float16),
        "model.layers.0.attn.weight": torch.randn(2, 3, 4, generator=g).to(torch.bfloat16),
        "model.ids": torch.randint(-(2**31), 2**31 - 1, (7,), generator=g, dtype=torch.int32),
        "model.q4": torch.randint(-128, 128, (2, 2, 2, 2), generator=g, dtype=torch.int8),
        "model.bytes": torch.randint(0, 256, (9,), generator=g, dtype=torch.uint8),
        "model.step": torch.tensor(1234567890123, dtype=torch.int64),  # rank 0
        "model.empty": torch.zeros(0, 3, dtype=torch.float32),  # zero elements
    }


DTYPE_NAMES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
    torch.int8: "I8", torch.uint8: "U8", torch.int64: "I64",
}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tensors = make_tensors()
    path = OUT / "ref.safetensors"
    save_file(tensors, str(path), metadata=METADATA)

    # Offsets as the reference wrote them, read back from the header itself.
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])

    golden = {"metadata": METADATA, "file_size": len(raw), "header_length": n, "tensors": []}
    for name in sorted(tensors):
        t = tensors[name]
        flat = t.reshape(-1)
        is_float = t.dtype.is_floating_point
        # float64 holds every F32/F16/BF16 value exactly; fsum rounds the exact sum once.
        values = [float(v) for v in flat.double().tolist()] if is_float else [int(v) for v in flat.tolist()]
        golden["tensors"].append({
            "name": name,
            "dtype": DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": header[name]["data_offsets"],
            "sum": math.fsum(values) if is_float else sum(values),
            "first": values[:N_FIRST],
        })
    (OUT / "ref_golden.json").write_text(json.dumps(golden, indent=2) + "\n")
    print(f"wrote {path} ({len(raw)} bytes) and ref_golden.json")


if __name__ == "__main__":
    main()
