#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/ from the test fixtures and a few hand-made inputs.

Run from the repository root: python3 fuzz/make_seeds.py [--tiny-gguf PATH]
The committed corpus is this output after `-merge=1` minimisation (fuzz/run_fuzzers.sh --merge); rerunning
this script only adds seeds (existing files are kept).
"""
import argparse, json, os, shutil, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
SHARD = b"\n#QF-SHARD#\n"
PART = b"\n#QF-PART#\n"


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def read(rel):
    with open(os.path.join(ROOT, rel), "rb") as f:
        return f.read()


# ---- GGUF -------------------------------------------------------------------------------------------------------
def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gkv(key, vtype, payload):
    return gstr(key) + struct.pack("<I", vtype) + payload


def gguf(kvs, tensors, data=b"", version=3, align=32):
    """tensors: list of (name, ne list, ggml type, relative offset)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    for name, ne, typ, off in tensors:
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", typ, off)
    out += b"\0" * ((-len(out)) % align)
    return out + data


def gguf_seeds(tiny):
    put("gguf", "small.gguf", read("tests/data/gguf/small.gguf"))
    put("gguf", "llama2_bytefallback.gguf", read("tests/data/tokenizer/llama2_bytefallback.gguf"))
    if tiny and os.path.exists(tiny):
        put("gguf", "tiny_llama_rtn.gguf", open(tiny, "rb").read())
    put("gguf", "empty_v3.gguf", gguf([], []))
    # Every metadata type, nested arrays and an explicit alignment.
    kvs = [
        gkv("u8", 0, b"\x07"), gkv("i8", 1, b"\xff"), gkv("u16", 2, b"\x01\x02"), gkv("i16", 3, b"\xfe\xff"),
        gkv("u32", 4, struct.pack("<I", 7)), gkv("i32", 5, struct.pack("<i", -7)), gkv("f32", 6, struct.pack("<f", 1.5)),
        gkv("bool", 7, b"\x01"), gkv("str", 8, gstr("hello")),
        gkv("arr.str", 9, struct.pack("<IQ", 8, 2) + gstr("a") + gstr("b")),
        gkv("arr.i32", 9, struct.pack("<IQ", 5, 3) + struct.pack("<3i", 1, -2, 3)),
        gkv("arr.f32", 9, struct.pack("<IQ", 6, 2) + struct.pack("<2f", 0.5, -1)),
        gkv("arr.nested", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 4, 1) + struct.pack("<I", 9)),
        gkv("u64", 10, struct.pack("<Q", 1 << 40)), gkv("i64", 11, struct.pack("<q", -(1 << 40))),
        gkv("f64", 12, struct.pack("<d", 2.25)), gkv("general.alignment", 4, struct.pack("<I", 64)),
    ]
    f32 = struct.pack("<8f", *range(8))
    f16 = struct.pack("<8H", *([0x3C00] * 8))
    q8 = struct.pack("<H", 0x3C00) + bytes(range(32))
    q40 = struct.pack("<H", 0x3C00) + bytes(range(16))
    q41 = struct.pack("<HH", 0x3C00, 0xBC00) + bytes(range(16))
    data = f32 + b"\0" * 32 + f16 + b"\0" * 48 + q8 + b"\0" * 30 + q40 + b"\0" * 46 + q41
    tensors = [("t.f32", [8], 0, 0), ("t.f16", [4, 2], 1, 64), ("t.q8_0", [32], 8, 128), ("t.q4_0", [32], 2, 192),
               ("t.q4_1", [32], 3, 256)]
    put("gguf", "all_types.gguf", gguf(kvs, tensors, data, align=64))
    # A llama header whose tensors are missing: config_from_gguf runs, weights_from_gguf fails early.
    llama = [gkv("general.architecture", 8, gstr("llama"))] + [
        gkv("llama." + k, 4, struct.pack("<I", v)) for k, v in
        [("block_count", 1), ("embedding_length", 16), ("feed_forward_length", 32), ("attention.head_count", 2),
         ("attention.head_count_kv", 1), ("context_length", 64)]] + [
        gkv("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5)),
        gkv("tokenizer.ggml.model", 8, gstr("gpt2")),
        gkv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 3) + gstr("a") + gstr("b") + gstr("ab")),
        gkv("tokenizer.ggml.merges", 9, struct.pack("<IQ", 8, 1) + gstr("a b")),
        gkv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 0))]
    put("gguf", "llama_header.gguf", gguf(llama, [("token_embd.weight", [16, 3], 0, 0)], b"\0" * (16 * 3 * 4)))


# ---- safetensors ------------------------------------------------------------------------------------------------
def st(tensors, meta=None):
    """tensors: list of (name, dtype, shape, bytes)."""
    hdr, off, blob = {}, 0, b""
    if meta:
        hdr["__metadata__"] = meta
    for name, dt, shape, b in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
        blob += b
    h = json.dumps(hdr).encode()
    h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def safetensors_seeds():
    put("safetensors", "ref.safetensors", read("tests/data/safetensors/ref.safetensors"))
    a = st([("a", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)), ("b", "I64", [1], struct.pack("<q", 5))],
           {"format": "pt"})
    b = st([("c", "BF16", [3], b"\x80\x3f" * 3), ("d", "U8", [0], b""), ("e", "I8", [2], b"\x01\xff")])
    put("safetensors", "single_meta.safetensors", a)
    put("safetensors", "single_dtypes.safetensors", b)
    index = {"metadata": {"total_size": 30}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors", "d": "model-00002-of-00002.safetensors",
        "e": "model-00002-of-00002.safetensors"}}
    put("safetensors", "sharded_2.bin", json.dumps(index).encode() + SHARD + a + SHARD + b)


# ---- config.json / quantization_config --------------------------------------------------------------------------
def config_seeds():
    for m in ("awq_gemm", "gptq_v1_desc_act", "gptq_v2_asym"):
        put("config", f"{m}_config.json", read(f"tests/data/packed/{m}/config.json"))
    for m in ("gptq_v1_desc_act", "gptq_v2_asym"):
        put("config", f"{m}_quantize_config.json", read(f"tests/data/packed/{m}/quantize_config.json"))
    base = json.loads(read("tests/data/packed/awq_gemm/config.json"))
    base.pop("quantization_config", None)
    q = dict(base, architectures=["Qwen2ForCausalLM"], model_type="qwen2", tie_word_embeddings=True,
             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192}, eos_token_id=[1, 2])
    put("config", "qwen2_llama3_rope.json", json.dumps(q))
    put("config", "awq_own_quant_config.json", json.dumps({"zero_point": True, "q_group_size": 128, "w_bit": 4,
                                                           "version": "GEMM", "quant_method": "awq"}))


# ---- tokenizer.json ---------------------------------------------------------------------------------------------
def tokenizer_seeds():
    put("tokenizer_json", "llama2_bytefallback_tokenizer.json", read("tests/data/tokenizer/llama2_bytefallback_tokenizer.json"))
    put("tokenizer_json", "bytelevel_with_config.json",
        read("tests/data/packed/awq_gemm/tokenizer.json") + PART + read("tests/data/packed/awq_gemm/tokenizer_config.json")
        + PART + b"Hello world 123")
    tiny = {"version": "1.0", "added_tokens": [{"id": 3, "content": "<s>", "single_word": False, "lstrip": False,
                                                "rstrip": False, "normalized": False, "special": True}],
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                               {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\s+|\\d"}, "behavior": "Isolated", "invert": False},
            "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                                        {"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [3], "tokens": ["<s>"]}}},
            "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                                                         {"type": "ByteFallback"}, {"type": "Fuse"}]},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "byte_fallback": True, "fuse_unk": False,
                      "vocab": {"a": 0, "b": 1, "ab": 2, "<s>": 3, "<0x41>": 4}, "merges": ["a b"]}}
    put("tokenizer_json", "tiny_sequence.json", json.dumps(tiny) + "\n#QF-PART#\n{}\n#QF-PART#\nab ba 12")


# ---- calibration ------------------------------------------------------------------------------------------------
def calibration_seeds():
    params = struct.pack("<bhIB", 4, 8, 1234, 0)
    put("calibration", "plain.txt", params + b"The quick brown fox jumps over the lazy dog.\nA second line.\n")
    put("calibration", "lines.jsonl", params + b'{"text": "first record"}\n\n{"text": "second \\u00e9 record", "id": 2}\n')
    put("calibration", "bad_line.jsonl", params + b'{"text": "ok"}\n{"title": 1}\n')


# ---- loader (config.json + model.safetensors [+ quantize_config.json]) ------------------------------------------
def loader_seeds(dense_dir):
    for m in ("awq_gemm", "gptq_v1_desc_act", "gptq_v2_asym"):
        d = f"tests/data/packed/{m}/"
        data = read(d + "config.json") + PART + read(d + "model.safetensors")
        put("loader", f"{m}.bin", data)
    # GPTQ with the quantization_config only in quantize_config.json (older checkpoints).
    cfg = json.loads(read("tests/data/packed/gptq_v2_asym/config.json"))
    cfg.pop("quantization_config")
    put("loader", "gptq_v2_quantize_config.bin", json.dumps(cfg).encode() + PART +
        read("tests/data/packed/gptq_v2_asym/model.safetensors") + PART + read("tests/data/packed/gptq_v2_asym/quantize_config.json"))
    if dense_dir and os.path.isdir(dense_dir):
        put("loader", "dense_f32.bin", open(os.path.join(dense_dir, "config.json"), "rb").read() + PART +
            open(os.path.join(dense_dir, "model.safetensors"), "rb").read())



# ---- a tiny dense HF checkpoint (for the loader seed, and for the tiny GGUF made from it) ------------------------
def write_dense(out_dir):
    """1 layer, hidden 32, vocab 258 (the packed fixtures' byte-level tokenizer), random f32 weights. Make the tiny GGUF
    seed from it with: qforge quantize --model DIR --method rtn --bits 4 --group-size 32 --format gguf --out X.gguf"""
    import random
    random.seed(1)
    os.makedirs(out_dir, exist_ok=True)
    H, I, L, NH, NKV, HD, V = 32, 64, 1, 2, 1, 16, 258
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": H,
           "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": NH, "num_key_value_heads": NKV,
           "head_dim": HD, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "bos_token_id": 256, "eos_token_id": 257, "torch_dtype": "float32"}
    t = {"model.embed_tokens.weight": [V, H], "model.norm.weight": [H], "lm_head.weight": [V, H]}
    for l in range(L):
        p = f"model.layers.{l}."
        t.update({p + "input_layernorm.weight": [H], p + "post_attention_layernorm.weight": [H],
                  p + "self_attn.q_proj.weight": [NH * HD, H], p + "self_attn.k_proj.weight": [NKV * HD, H],
                  p + "self_attn.v_proj.weight": [NKV * HD, H], p + "self_attn.o_proj.weight": [H, NH * HD],
                  p + "mlp.gate_proj.weight": [I, H], p + "mlp.up_proj.weight": [I, H], p + "mlp.down_proj.weight": [H, I]})
    tensors = []
    for name, shape in sorted(t.items()):
        n = 1
        for d in shape:
            n *= d
        vals = [1.0] * n if "norm" in name else [random.gauss(0, 0.1) for _ in range(n)]
        tensors.append((name, "F32", shape, struct.pack(f"<{n}f", *vals)))
    with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
        f.write(st(tensors))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f)
    shutil.copy(os.path.join(ROOT, "tests/data/packed/awq_gemm/tokenizer.json"), os.path.join(out_dir, "tokenizer.json"))

# ---- unpack_linear ----------------------------------------------------------------------------------------------
def unpack_seeds():
    def rec(fmt, out, inn, group, nqw, nqz, nsc, ngi, gidx=None):
        b = struct.pack("<BB", fmt, 0) + struct.pack("<BBB", out // 8, inn // 8, group // 8)
        b += struct.pack("<4H", nqw, nqz, nsc, ngi)
        b += bytes((i * 37 + 11) & 0xFF for i in range(4 * nqw))
        b += bytes((i * 53 + 7) & 0xFF for i in range(4 * nqz))
        b += struct.pack(f"<{nsc}H", *([0x3C00, 0x3800, 0xB400] * nsc)[:nsc])
        if gidx:
            b += struct.pack(f"<{len(gidx)}i", *gidx)
        return b
    O, I, G = 16, 32, 8
    ng = I // G
    put("unpack", "awq.bin", rec(0, O, I, G, I * O // 8, ng * O // 8, ng * O, 0))
    put("unpack", "gptq_v1.bin", rec(1, O, I, G, I // 8 * O, ng * O // 8, ng * O, 0))
    gi = [(i * 3) % ng for i in range(I)]  # act-order: every group keeps 8 columns
    put("unpack", "gptq_v2_actorder.bin", rec(2, O, I, G, I // 8 * O, ng * O // 8, ng * O, I, gi))
    put("unpack", "gptq_v1_perchannel.bin", rec(1, O, I, 0, I // 8 * O, O // 8, O, 0))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny-gguf", help="a tiny llama .gguf with a tokenizer (qforge quantize --format gguf)")
    ap.add_argument("--dense-dir", help="a tiny dense HF directory (config.json + model.safetensors)")
    ap.add_argument("--write-dense", metavar="DIR", help="only write the tiny dense HF directory to DIR, then exit")
    a = ap.parse_args()
    if a.write_dense:
        write_dense(a.write_dense)
        raise SystemExit(0)
    gguf_seeds(a.tiny_gguf)
    safetensors_seeds()
    config_seeds()
    tokenizer_seeds()
    calibration_seeds()
    loader_seeds(a.dense_dir)
    unpack_seeds()
