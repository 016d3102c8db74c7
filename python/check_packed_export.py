#!/usr/bin/env python3
"""Checks a packed 4-bit HF checkpoint (AutoAWQ GEMM or GPTQ v1/v2) against a float HF checkpoint.

    check_packed_export.py PACKED_DIR DEQUANT_DIR

PACKED_DIR: config.json with quantization_config (or quantize_config.json / quant_config.json beside it) and
model.safetensors, or shards listed by model.safetensors.index.json. DEQUANT_DIR: the same model's float weights
(F32, F16 or BF16 safetensors, single file or sharded), holding `<linear>.weight` [out, in] for every quantized
linear; for example a temp dir with a fixture's reference.safetensors renamed to model.safetensors.

Every quantized linear is unpacked with packed_formats.py into W = (q - z) * s computed in float32, which is
exact (a <= 5-bit integer times an fp16 significand fits in float32's 24 bits). The bound is therefore:
  * DEQUANT_DIR tensor in F32: max |W_dequant - W| must be exactly 0.
  * DEQUANT_DIR tensor in F16/BF16: it must equal W rounded once to that type (round to nearest even), i.e. the
    error is at most half an ulp of that type and the comparison against the rounded W is exact 0. A writer that
    rounds twice (e.g. q*s - z*s in fp16) fails this on purpose.
Float tensors that are not quantized linears are compared exactly too when DEQUANT_DIR has them.

Config checks follow what the consumers parse:
  vLLM vllm/model_executor/layers/quantization/awq.py   AWQConfig.from_config: bits|w_bit == 4,
      group_size|q_group_size, zero_point required; transformers AwqConfig: version "gemm" for this layout.
  vLLM .../quantization/gptq.py GPTQConfig.from_config: bits, group_size, desc_act required; checkpoint_format
      "gptq_v2" selects v2 zeros, anything else is v1.
  vLLM .../quantization/gptq_marlin.py: bits, group_size, desc_act and sym must all be present, and only
      (4, sym=True) maps to a Marlin type (uint4b8), so sym=False GPTQ runs on the slower gptq kernels.
Also: every tensor that is not a quantized linear must be F16/BF16; scales F16 (BF16 warns: vLLM's plain gptq/awq
kernels take fp16 only); g_idx must be i // group_size when desc_act is false (vLLM's gptq path drops g_idx then).

Prints one line per tensor; exits 1 if any check fails. Warnings do not fail.
"""
import argparse
import json
import pathlib
import struct
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import packed_formats as pf  # noqa: E402

FLOAT_TYPES = {"F32", "F16", "BF16"}
HALF_TYPES = {"F16", "BF16"}
NP_TYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64, "U8": np.uint8,
            "I8": np.int8, "I16": np.int16, "BF16": np.uint16, "F64": np.float64}


# ------------------------------------------------------------------------------------------------ reading
class SafetensorsDir:
    """All tensors of an HF directory: one model.safetensors, an index with shards, or every *.safetensors."""

    def __init__(self, d):
        self.dir = pathlib.Path(d)
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (self.dir / "model.safetensors").exists():
            files = ["model.safetensors"]
        else:
            files = sorted(p.name for p in self.dir.glob("*.safetensors") if p.name != "reference.safetensors")
        if not files:
            raise SystemExit(f"{self.dir}: no safetensors files")
        self.where = {}  # name -> (path, dtype, shape, begin, end)
        for f in files:
            path = self.dir / f
            with open(path, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(n))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if name in self.where:
                    raise SystemExit(f"{path}: tensor {name} also in {self.where[name][0]}")
                b, e = info["data_offsets"]
                self.where[name] = (path, info["dtype"], tuple(info["shape"]), 8 + n + b, 8 + n + e)

    def names(self):
        return sorted(self.where)

    def dtype(self, name):
        return self.where[name][1]

    def get(self, name):
        path, dtype, shape, b, e = self.where[name]
        if dtype not in NP_TYPES:
            raise SystemExit(f"{path}: tensor {name} has unsupported dtype {dtype}")
        with open(path, "rb") as fh:
            fh.seek(b)
            raw = fh.read(e - b)
        return np.frombuffer(raw, dtype=NP_TYPES[dtype]).reshape(shape)

    def get_float32(self, name):
        a = self.get(name)
        if self.dtype(name) == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        return a.astype(np.float32)


def round_f32_to(a, dtype):
    """float32 -> the float32 value of its round-to-nearest-even F16 or BF16."""
    if dtype == "F16":
        return a.astype(np.float16).astype(np.float32)
    if dtype == "BF16":
        u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16  # RNE on the dropped 16 bits (finite inputs)
        return u.astype(np.uint32).view(np.float32)
    return a.astype(np.float32)


def read_quant_config(d):
    """-> (dict, where it came from). config.json's quantization_config wins, as in transformers and vLLM."""
    cfg_path = d / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    if "quantization_config" in cfg:
        return cfg["quantization_config"], cfg_path, cfg
    for name in ("quantize_config.json", "quant_config.json"):
        if (d / name).exists():
            return json.loads((d / name).read_text()), d / name, cfg
    raise SystemExit(f"{d}: no quantization_config in config.json and no quantize_config.json")


# ------------------------------------------------------------------------------------------------ checks
class Report:
    def __init__(self):
        self.errors = 0

    def error(self, msg):
        self.errors += 1
        print(f"ERROR  {msg}")

    def warn(self, msg):
        print(f"WARN   {msg}")

    def ok(self, msg):
        print(f"ok     {msg}")


def get_key(q, keys, default=None):
    for k in keys:
        if k in q:
            return q[k]
    return default


def check_config(q, src, d, rep):
    """-> (method, group_size, version, desc_act)."""
    method = str(q.get("quant_method", "")).lower()
    bits = get_key(q, ["bits", "w_bit"])
    group = get_key(q, ["group_size", "q_group_size"])
    if bits != 4 or isinstance(bits, bool):
        rep.error(f"{src}: bits = {bits!r}, only 4 is supported")
    if not isinstance(group, int) or isinstance(group, bool) or not (group == -1 or group > 0):
        rep.error(f"{src}: group_size = {group!r}, expected a positive int or -1")
    if method == "awq":
        zp = q.get("zero_point")
        if not isinstance(zp, bool):
            rep.error(f"{src}: zero_point = {zp!r}; vLLM's AWQConfig requires a bool")
        elif not zp:
            rep.warn(f"{src}: zero_point false; vLLM's awq_marlin path needs zero points")
        version = str(q.get("version", "")).lower()
        if version != "gemm":
            rep.error(f"{src}: version = {q.get('version')!r}, this checker reads the GEMM layout only")
        mtnc = q.get("modules_to_not_convert")
        if mtnc is not None and not isinstance(mtnc, list):
            rep.error(f"{src}: modules_to_not_convert = {mtnc!r}, expected null or a list")
        rep.ok(f"{src}: awq bits=4 group_size={group} zero_point={zp} version={version}")
        return "awq", group, None, False
    if method == "gptq":
        desc_act, sym = q.get("desc_act"), q.get("sym")
        if not isinstance(desc_act, bool):
            rep.error(f"{src}: desc_act = {desc_act!r}; vLLM's GPTQConfig requires a bool")
        if not isinstance(sym, bool):
            rep.error(f"{src}: sym = {sym!r}; vLLM's gptq_marlin needs a bool sym to take the checkpoint")
        elif not sym:
            rep.warn(f"{src}: sym=false: vLLM gptq_marlin only maps (4, sym=True); this runs on gptq_gemm")
        fmt = q.get("checkpoint_format", "gptq")
        if fmt not in ("gptq", "gptq_v2"):
            rep.error(f"{src}: checkpoint_format = {fmt!r}, expected gptq or gptq_v2")
        if "format" in q and q["format"] != fmt:
            rep.error(f"{src}: format {q['format']!r} disagrees with checkpoint_format {fmt!r}")
        lm_head = q.get("lm_head", False)
        if not isinstance(lm_head, bool):
            rep.error(f"{src}: lm_head = {lm_head!r}, expected a bool")
        qc = d / "quantize_config.json"
        if qc.exists() and qc != src:
            other = json.loads(qc.read_text())
            for k in ("bits", "group_size", "desc_act", "sym", "checkpoint_format", "lm_head"):
                if k in other and k in q and other[k] != q[k]:
                    rep.error(f"{qc}: {k} = {other[k]!r} but {src} says {q[k]!r}")
        version = 2 if fmt == "gptq_v2" else 1
        rep.ok(f"{src}: gptq v{version} bits=4 group_size={group} desc_act={desc_act} sym={sym}")
        return "gptq", group, version, bool(desc_act)
    rep.error(f"{src}: quant_method = {q.get('quant_method')!r}, expected awq or gptq")
    return None, group, None, False


def unpack_linear(packed, base, method, group, version, desc_act, rep):
    """-> float32 W [out, in] or None."""
    need = [".qweight", ".qzeros", ".scales"] + ([".g_idx"] if method == "gptq" else [])
    missing = [s for s in need if base + s not in packed.where]
    if missing:
        rep.error(f"{base}: missing {', '.join(base + s for s in missing)}")
        return None
    for s in (".qweight", ".qzeros") + ((".g_idx",) if method == "gptq" else ()):
        if packed.dtype(base + s) != "I32":
            rep.error(f"{base}{s}: dtype {packed.dtype(base + s)}, expected I32")
            return None
    sd = packed.dtype(base + ".scales")
    if sd not in HALF_TYPES:
        rep.error(f"{base}.scales: dtype {sd}, expected F16")
        return None
    if sd == "BF16":
        rep.warn(f"{base}.scales: BF16; vLLM's plain awq/gptq kernels take fp16 only")
    qw, qz = packed.get(base + ".qweight"), packed.get(base + ".qzeros")
    scales = packed.get_float32(base + ".scales")  # exact widening of F16/BF16
    try:
        if method == "awq":
            n_in = qw.shape[0]
            g = n_in if group == -1 else group
            return pf.unpack_awq_gemm(qw, qz, scales, g)[3]
        n_in = qw.shape[0] * pf.PACK
        g = n_in if group == -1 else group
        g_idx = packed.get(base + ".g_idx")
        if n_in % g or qz.shape[0] != n_in // g:
            rep.error(f"{base}.qzeros: {qz.shape[0]} groups, expected in/group_size = {n_in}/{g}")
            return None
        if not desc_act and not np.array_equal(g_idx, np.arange(n_in) // g):
            rep.error(f"{base}.g_idx: not i // group_size although desc_act is false (vLLM ignores it)")
        if version == 1 and pf.gptq_v1_has_ambiguous_zeros(qz):
            rep.warn(f"{base}.qzeros: v1 word holds a 0xF nibble (zero point 0): per-nibble v1 readers "
                     "(AutoGPTQ, exllama) decode zero 16 there, GPTQModel decodes 0; prefer gptq_v2")
        return pf.unpack_gptq(qw, qz, scales, g_idx, version)[3]
    except ValueError as e:
        rep.error(f"{base}: {e}")
        return None


def compare(name, w, dq, rep):
    if name not in dq.where:
        rep.error(f"{name}: not in DEQUANT_DIR")
        return
    dt = dq.dtype(name)
    if dt not in FLOAT_TYPES:
        rep.error(f"{name}: DEQUANT_DIR dtype {dt}, expected F32/F16/BF16")
        return
    got = dq.get_float32(name)
    if got.shape != w.shape:
        rep.error(f"{name}: DEQUANT_DIR shape {got.shape}, unpacked {w.shape}")
        return
    raw = float(np.max(np.abs(got - w))) if w.size else 0.0
    vs_rounded = float(np.max(np.abs(got - round_f32_to(w, dt)))) if w.size else 0.0
    line = f"{name}: {dt} {list(w.shape)} max|dequant - (q-z)*s| = {raw:.3g}"
    if dt != "F32":
        line += f", vs (q-z)*s rounded once to {dt} = {vs_rounded:.3g}"
    (rep.ok if vs_rounded == 0.0 else rep.error)(line + ("" if vs_rounded == 0.0 else "  (bound: exactly 0)"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("packed_dir")
    ap.add_argument("dequant_dir")
    args = ap.parse_args()
    pdir, ddir = pathlib.Path(args.packed_dir), pathlib.Path(args.dequant_dir)
    rep = Report()

    q, src, cfg = read_quant_config(pdir)
    method, group, version, desc_act = check_config(q, src, pdir, rep)
    packed, dq = SafetensorsDir(pdir), SafetensorsDir(ddir)
    bases = sorted(n[: -len(".qweight")] for n in packed.names() if n.endswith(".qweight"))
    if not bases:
        rep.error(f"{pdir}: no *.qweight tensors")
    if method is not None:
        for base in bases:
            if base + ".weight" in packed.where:
                rep.error(f"{base}: has both .qweight and .weight")
            w = unpack_linear(packed, base, method, group, version, desc_act, rep)
            if w is not None:
                compare(base + ".weight", w, dq, rep)

    quant_suffixes = (".qweight", ".qzeros", ".scales", ".g_idx")
    quant_names = {b + s for b in bases for s in quant_suffixes}
    n_plain = 0
    for name in packed.names():
        if name in quant_names:
            continue
        n_plain += 1
        dt = packed.dtype(name)
        if dt not in HALF_TYPES:
            rep.error(f"{name}: non-quantized tensor is {dt}, expected F16 or BF16")
            continue
        if name in dq.where:
            a, b = packed.get_float32(name), dq.get_float32(name)
            if a.shape != b.shape or not np.array_equal(round_f32_to(b, dt), a):
                rep.error(f"{name}: differs from DEQUANT_DIR")
    rep.ok(f"{n_plain} non-quantized tensors are F16/BF16")
    if cfg and str(cfg.get("torch_dtype", cfg.get("dtype", "float16"))) not in ("float16", "bfloat16"):
        rep.warn(f"config.json dtype {cfg.get('torch_dtype', cfg.get('dtype'))!r}: vLLM awq/gptq run in fp16")

    print(f"{len(bases)} quantized linears, {rep.errors} error(s)")
    return 1 if rep.errors else 0


if __name__ == "__main__":
    sys.exit(main())
