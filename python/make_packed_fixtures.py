#!/usr/bin/env python3
"""Builds the packed 4-bit checkpoint fixtures in tests/data/packed/ with the REAL quantization tools.

Each fixture is a tiny Llama quantized on CPU by the tool that defines its format, saved the way that tool saves
it, plus a reference.safetensors that holds, under the HF name (model.layers.N.self_attn.q_proj.weight,
[out, in] float32), the dequantized weight of every quantized linear:

  awq_gemm/           AutoAWQ 0.2.9   AutoAWQForCausalLM.quantize(zero_point=True, q_group_size=32, version GEMM)
  gptq_v1_desc_act/   GPTQModel 7.7.0 QuantizeConfig(bits=4, group_size=32, desc_act=True, sym=True, format=gptq)
  gptq_v2_asym/       GPTQModel 7.7.0 QuantizeConfig(bits=4, group_size=32, desc_act=False, sym=False,
                                                     format=gptq_v2)

reference.safetensors is computed by python/packed_formats.py (numpy, written from the published layouts) and,
before it is written, checked bit for bit against each tool's own dequantizer run on the same files
(awq.utils.packing_utils.dequantize_gemm; gptqmodel TorchQuantLinear.dequantize_weight), both with the fp16
scales widened to float32 so the product is exact. So the C++ loader is checked against the tools, not against
qforge's own packing code.

The model: LlamaForCausalLM, hidden 64, intermediate 128, 2 layers, 4 heads, 2 KV heads, head_dim 16, vocab 258
(256 byte tokens + <s> + </s>), untied lm_head, seeded random fp16 weights (norms 1 + noise). Smaller than
hidden 128 / intermediate 256 because the float32 references of that size are 1.18 MB per fixture and the
directory must stay under 1.5 MB; group size 32 keeps 2 groups on in=64 and 4 on in=128 (down_proj).
The tokenizer is a byte-level BPE with no merges (tokenizer.json written here, checked with `tokenizers`).

Environment (CPU only; what this was run with): python 3.11, torch 2.15.0, transformers 5.24.0, tokenizers 0.23.3,
autoawq 0.2.9 (pip install --no-deps autoawq==0.2.9, plus datasets), gptqmodel 7.7.0 (pip install --no-deps
gptqmodel==7.7.0, plus threadpoolctl device-smi protobuf pypcre tokenicer logbar dill defuser torchao pillow).
    GPTQMODEL_CPU_WORKERS=2 /tmp/toolvenv/bin/python python/make_packed_fixtures.py
Tool quirks handled here:
  * AutoAWQ: apply_clip=False, because _compute_best_clip asserts out_features % 64 == 0 (k/v_proj have 32).
  * AutoAWQ's save_quantized writes no tokenizer; the tokenizer files are copied in.
  * GPTQModel needs GPTQMODEL_CPU_WORKERS >= 2 on a 2-core machine, and dtype=float16 (it defaults to bf16 on
    CPU, which would also round the fp16 scales to bf16 on load).
  * GPTQModel writes a random temp dir into meta.offload_to_disk_path and timings into quant_log.csv; the path is
    replaced by a fixed string and quant_log.csv is dropped so a rerun gives the same bytes.
  * transformers 5 writes "dtype" and "rope_parameters": {"rope_theta": ...} in config.json (no top-level
    torch_dtype / rope_theta); the fixtures keep what the tools wrote.
"""
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import numpy as np
import torch
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import load_file as torch_load_file

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import packed_formats as pf  # noqa: E402

ROOT = HERE.parent
OUT = ROOT / "tests" / "data" / "packed"
SEED = 20251126
GROUP = 32
MAX_DIR_BYTES = 1_500_000  # commit-size budget for tests/data/packed
OFFLOAD_PATH_PLACEHOLDER = "/tmp/gptqmodel_offload"

MODEL = dict(vocab_size=258, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5,
             bos_token_id=256, eos_token_id=257, tie_word_embeddings=False)
CALIB = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!",
         "Sphinx of black quartz, judge my vow.", "0123456789 + - * / = ( ) [ ] { }"] * 16


# ------------------------------------------------------------------------------------------------ tokenizer
def bytes_to_unicode():
    """GPT-2's byte -> printable character table used by the ByteLevel pre-tokenizer."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def special(id_, content):
    return {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def tokenizer_json():
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    vocab["<s>"], vocab["</s>"] = 256, 257
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [special(256, "<s>"), special(257, "</s>")],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}},
                                    {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [256], "tokens": ["<s>"]}}},
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }


TOKENIZER_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                    "add_bos_token": True, "add_eos_token": False, "model_max_length": 256, "clean_up_tokenization_spaces": False}


def write_tokenizer(d):
    (d / "tokenizer.json").write_text(json.dumps(tokenizer_json(), ensure_ascii=False, indent=1) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")


def check_tokenizer(d):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    text = "héllo, wörld\n\t✓"
    enc = tok.encode(text)
    assert enc.ids == [256] + list(text.encode("utf-8")), enc.ids
    assert tok.decode(enc.ids, skip_special_tokens=True) == text
    assert tok.get_vocab_size() == MODEL["vocab_size"]


# ------------------------------------------------------------------------------------------------ float model
def make_float_model(d):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(LlamaConfig(**MODEL))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    model = model.to(torch.float16)
    model.save_pretrained(d)
    write_tokenizer(d)


# ------------------------------------------------------------------------------------------------ tools
def run_autoawq(float_dir, out_dir):
    from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer
    torch.manual_seed(SEED)
    model = AutoAWQForCausalLM.from_pretrained(str(float_dir), device_map="cpu", torch_dtype=torch.float16)
    tok = AutoTokenizer.from_pretrained(str(float_dir))
    model.quantize(tok, quant_config={"zero_point": True, "q_group_size": GROUP, "w_bit": 4, "version": "GEMM"},
                   calib_data=CALIB, max_calib_samples=len(CALIB), max_calib_seq_len=64,
                   n_parallel_calib_samples=None, apply_clip=False)
    model.save_quantized(str(out_dir))
    write_tokenizer(out_dir)


def run_gptqmodel(float_dir, out_dir, *, desc_act, sym, fmt):
    from gptqmodel import GPTQModel, QuantizeConfig
    torch.manual_seed(SEED)
    cfg = QuantizeConfig(bits=4, group_size=GROUP, desc_act=desc_act, sym=sym, format=fmt)
    model = GPTQModel.load(str(float_dir), cfg, device="cpu", dtype=torch.float16)
    model.quantize(CALIB, batch_size=4)
    model.save(str(out_dir))
    (out_dir / "quant_log.csv").unlink(missing_ok=True)
    for name in ("config.json", "quantize_config.json"):
        p = out_dir / name
        j = json.loads(p.read_text())
        meta = (j.get("quantization_config", j)).get("meta", {})
        if "offload_to_disk_path" in meta:
            meta["offload_to_disk_path"] = OFFLOAD_PATH_PLACEHOLDER
        p.write_text(json.dumps(j, indent=2) + "\n")
    write_tokenizer(out_dir)


# ------------------------------------------------------------------------------------------------ references
def quantized_bases(tensors):
    return sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))


def reference_awq(d):
    from awq.utils.packing_utils import dequantize_gemm
    t = torch_load_file(str(d / "model.safetensors"))
    ref = {}
    for b in quantized_bases(t):
        qw, qz, s = t[b + ".qweight"], t[b + ".qzeros"], t[b + ".scales"]
        _, _, _, w = pf.unpack_awq_gemm(qw.numpy(), qz.numpy(), s.numpy(), GROUP)
        tool = dequantize_gemm(qw, qz, s.float(), 4, GROUP).numpy().T  # [in, out] -> [out, in]
        if not np.array_equal(tool, w):
            raise SystemExit(f"{d.name}/{b}: packed_formats differs from AutoAWQ dequantize_gemm")
        ref[b + ".weight"] = w
    return ref


def reference_gptq(d, version):
    from gptqmodel import BACKEND, GPTQModel
    t = torch_load_file(str(d / "model.safetensors"))
    ref = {}
    for b in quantized_bases(t):
        qw, qz, s, gi = (t[b + x].numpy() for x in (".qweight", ".qzeros", ".scales", ".g_idx"))
        ref[b + ".weight"] = pf.unpack_gptq(qw, qz, s, gi, version)[3]
    model = GPTQModel.load(str(d), device="cpu", backend=BACKEND.TORCH, dtype=torch.float16)
    seen = 0
    for name, mod in model.model.named_modules():
        if not (hasattr(mod, "dequantize_weight") and hasattr(mod, "qzeros")):
            continue
        mod.scales = mod.scales.float()  # exact product, like packed_formats
        tool = mod.dequantize_weight().float().numpy().T  # [in, out] -> [out, in]
        if not np.array_equal(tool, ref[name + ".weight"]):
            raise SystemExit(f"{d.name}/{name}: packed_formats differs from GPTQModel dequantize_weight")
        seen += 1
    if seen != len(ref):
        raise SystemExit(f"{d.name}: GPTQModel dequantized {seen} modules, the file has {len(ref)}")
    return ref


def write_reference(d, ref):
    np_save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(ref.items())},
                 str(d / "reference.safetensors"), metadata={"format": "pt"})


def check_transformers_config(d):
    from transformers import AutoConfig
    q = AutoConfig.from_pretrained(str(d)).quantization_config
    assert q["quant_method"] in ("awq", "gptq") and q["bits"] == 4, q


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        float_dir = pathlib.Path(tmp) / "float"
        make_float_model(float_dir)
        check_tokenizer(float_dir)
        jobs = [
            ("awq_gemm", lambda o: run_autoawq(float_dir, o), reference_awq),
            ("gptq_v1_desc_act", lambda o: run_gptqmodel(float_dir, o, desc_act=True, sym=True, fmt="gptq"),
             lambda o: reference_gptq(o, 1)),
            ("gptq_v2_asym", lambda o: run_gptqmodel(float_dir, o, desc_act=False, sym=False, fmt="gptq_v2"),
             lambda o: reference_gptq(o, 2)),
        ]
        for name, build, reference in jobs:
            out = OUT / name
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            build(out)
            write_reference(out, reference(out))
            check_tokenizer(out)
            check_transformers_config(out)
    total = 0
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"{p.relative_to(OUT)}  {p.stat().st_size:>8}  {hashlib.sha256(p.read_bytes()).hexdigest()[:16]}")
    print(f"total {total} bytes")
    if total > MAX_DIR_BYTES:
        raise SystemExit(f"{OUT} is {total} bytes, over the {MAX_DIR_BYTES} budget")


if __name__ == "__main__":
    main()
