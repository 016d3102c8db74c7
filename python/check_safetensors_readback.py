#!/usr/bin/env python3
"""Checks that files written by the C++ safetensors writer load in the reference implementation.

Not part of ctest (needs torch + safetensors). Export files from the C++ tests, then check them:

  mkdir -p /tmp/st_export
  QFORGE_SAFETENSORS_EXPORT_DIR=/tmp/st_export build/qforge_tests --gtest_filter='Safetensors.*'
  /tmp/pyref/bin/python python/check_safetensors_readback.py /tmp/st_export/cpp_every_dtype.safetensors
  /tmp/pyref/bin/python python/check_safetensors_readback.py /tmp/st_export/cpp_rewrite_of_ref.safetensors \\
      --against tests/data/safetensors/ref.safetensors

The reference loader is stricter than ours in one way: it rejects data sections with holes or trailing
bytes, so loading here also checks that the writer packs tensors exactly. With --against, every tensor
and the metadata must equal the other file's, bit for bit. Exits non-zero on any mismatch.
"""
import argparse
import json
import sys

import torch
from safetensors import safe_open


def load(path):
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--against", help="reference file whose tensors and metadata must match exactly")
    args = ap.parse_args()

    tensors, metadata = load(args.file)
    with open(args.file, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    ok = True
    if n % 8:
        print(f"header length {n} is not a multiple of 8")
        ok = False
    for name, t in sorted(tensors.items()):
        begin, end = header[name]["data_offsets"]
        aligned = (8 + n + begin) % t.element_size() == 0
        flag = "" if aligned else " MISALIGNED"
        print(f"{name:40s} {str(t.dtype):16s} {list(t.shape)} [{begin}, {end}){flag}")
        ok &= aligned
    print(f"metadata: {metadata}")

    if args.against:
        ref, ref_meta = load(args.against)
        if sorted(ref) != sorted(tensors):
            print(f"tensor names differ: {sorted(ref)} vs {sorted(tensors)}")
            ok = False
        for name in sorted(set(ref) & set(tensors)):
            a, b = tensors[name], ref[name]
            same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(
                a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
            if not same:
                print(f"tensor {name} differs from {args.against}")
                ok = False
        if metadata != ref_meta:
            print(f"metadata differs: {metadata} vs {ref_meta}")
            ok = False
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
