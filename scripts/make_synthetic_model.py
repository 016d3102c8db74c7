#!/usr/bin/env python3
"""Writes a synthetic Llama model as a Hugging Face directory that `qforge quantize --model DIR` loads.

    make_synthetic_model.py --out DIR --layers N --tokenizer TOK [--seed 0] [--hidden 2048] [--intermediate 5632]
                            [--heads 32] [--kv-heads 4] [--tie-word-embeddings] [--max-shard-mb 512]

DIR gets config.json (LlamaForCausalLM, torch_dtype float16), generation_config.json, the weights as fp16
safetensors shards model-0000k-of-0000n.safetensors with model.safetensors.index.json (as transformers'
save_pretrained writes them), and the tokenizer files copied from TOK (a tokenizer.json, or a directory holding
tokenizer.json and optionally tokenizer_config.json / special_tokens_map.json). vocab_size is the tokenizer's
(largest token id + 1), since qforge embeds every calibration token id.

Values: linears and embeddings normal * 0.02 (the Llama initializer_range), RMSNorm weights 1 + 0.02 * normal.
Each tensor draws from its own generator seeded by (--seed, tensor name), so a tensor's bytes do not depend on
--layers: the 4-layer model is exactly the first 4 layers of the 32-layer one. The shards are written by hand,
one tensor at a time in chunks of rows, so the generator holds at most one chunk (~64 MiB) whatever the size.

Runs with numpy (the pinned venv of scripts/setup.sh: ${XDG_CACHE_HOME:-~/.cache}/qforge/pyenv/bin/python);
--verify re-reads every shard with the safetensors package and checks names, shapes and a checksum.
"""
import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import zlib

import numpy as np

CHUNK_ELEMENTS = 1 << 24  # 16M values = 64 MiB of f32 while generating, 32 MiB as f16


def tensor_specs(args, vocab):
    """(name, shape, kind) in the order transformers' state_dict lists them."""
    H, I = args.hidden, args.intermediate
    head_dim = H // args.heads
    Q, KV = args.heads * head_dim, args.kv_heads * head_dim
    specs = [("model.embed_tokens.weight", (vocab, H), "linear")]
    for l in range(args.layers):
        p = f"model.layers.{l}."
        specs += [
            (p + "self_attn.q_proj.weight", (Q, H), "linear"),
            (p + "self_attn.k_proj.weight", (KV, H), "linear"),
            (p + "self_attn.v_proj.weight", (KV, H), "linear"),
            (p + "self_attn.o_proj.weight", (H, Q), "linear"),
            (p + "mlp.gate_proj.weight", (I, H), "linear"),
            (p + "mlp.up_proj.weight", (I, H), "linear"),
            (p + "mlp.down_proj.weight", (H, I), "linear"),
            (p + "input_layernorm.weight", (H,), "norm"),
            (p + "post_attention_layernorm.weight", (H,), "norm"),
        ]
    specs.append(("model.norm.weight", (H,), "norm"))
    if not args.tie_word_embeddings:
        specs.append(("lm_head.weight", (vocab, H), "linear"))
    return specs


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def tensor_chunks(name, shape, kind, seed, std):
    """Yields the tensor's fp16 values as little-endian bytes, chunk by chunk; deterministic in (seed, name)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode())])))
    left = numel(shape)
    while left > 0:
        n = min(left, CHUNK_ELEMENTS)
        x = rng.standard_normal(n, dtype=np.float32) * np.float32(std)
        if kind == "norm":
            x += np.float32(1.0)
        yield x.astype("<f2").tobytes()
        left -= n


def plan_shards(specs, max_shard_bytes):
    """Greedy split in state_dict order, as transformers' shard_checkpoint does: a tensor larger than the limit
    gets a shard of its own."""
    shards, cur, cur_bytes = [], [], 0
    for spec in specs:
        b = 2 * numel(spec[1])
        if cur and cur_bytes + b > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(spec)
        cur_bytes += b
    if cur:
        shards.append(cur)
    return shards


def write_shard(path, specs, seed, std):
    header, offset = {}, 0
    for name, shape, _ in specs:
        nbytes = 2 * numel(shape)
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned, as the safetensors library pads it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, shape, kind in specs:
            for chunk in tensor_chunks(name, shape, kind, seed, std):
                f.write(chunk)
    return offset


def find_tokenizer(tok):
    """(tokenizer.json path, [other tokenizer files to copy])."""
    if os.path.isdir(tok):
        tj = os.path.join(tok, "tokenizer.json")
        extra = [os.path.join(tok, n) for n in ("tokenizer_config.json", "special_tokens_map.json")]
        return tj, [p for p in extra if os.path.isfile(p)]
    return tok, []


def tokenizer_vocab(tj_path):
    with open(tj_path, encoding="utf-8") as f:
        tj = json.load(f)
    model = tj.get("model") or {}
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        sys.exit(f"{tj_path}: model.vocab missing or empty (a BPE tokenizer.json is needed)")
    ids = {tok: i for tok, i in vocab.items()}
    for a in tj.get("added_tokens") or []:
        ids[a["content"]] = a["id"]
    return max(ids.values()) + 1, ids


def special_ids(tok_files, ids):
    """bos/eos ids from tokenizer_config.json, when it names tokens the vocabulary has."""
    out = {}
    for p in tok_files:
        if os.path.basename(p) != "tokenizer_config.json":
            continue
        with open(p, encoding="utf-8") as f:
            cfg = json.load(f)
        for key in ("bos_token", "eos_token"):
            t = cfg.get(key)
            if isinstance(t, dict):
                t = t.get("content")
            if isinstance(t, str) and t in ids:
                out[key + "_id"] = ids[t]
    return out


def verify(out_dir, specs, seed, std):
    from safetensors import safe_open

    with open(os.path.join(out_dir, "model.safetensors.index.json")) as f:
        index = json.load(f)
    wm = index["weight_map"]
    assert set(wm) == {s[0] for s in specs}, "index names differ from the tensors written"
    spec = {s[0]: s for s in specs}
    for shard in sorted(set(wm.values())):
        with safe_open(os.path.join(out_dir, shard), framework="numpy") as f:
            for name in f.keys():
                assert wm[name] == shard, f"{name} is in {shard}, index says {wm[name]}"
                _, shape, kind = spec[name]
                if numel(shape) > 4 * CHUNK_ELEMENTS:  # the big ones: shape only, to keep this quick
                    assert tuple(f.get_slice(name).get_shape()) == shape, name
                    continue
                t = f.get_tensor(name)
                assert t.dtype == np.float16 and t.shape == shape, (name, t.dtype, t.shape)
                expect = b"".join(tensor_chunks(name, shape, kind, seed, std))
                assert t.tobytes() == expect, f"{name}: bytes differ from the generator"
    print(f"verify: {len(wm)} tensors in {len(set(wm.values()))} shards read back by safetensors", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory (must not exist; written atomically)")
    ap.add_argument("--layers", type=int, required=True, help="num_hidden_layers")
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json, or a directory holding it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--std", type=float, default=0.02, help="std of the linear and embedding weights")
    ap.add_argument("--rms-norm-eps", type=float, default=1e-5)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--tie-word-embeddings", action="store_true", help="no lm_head.weight (default: untied)")
    ap.add_argument("--max-shard-mb", type=int, default=512, help="shard size limit in MiB (HF-style split)")
    ap.add_argument("--verify", action="store_true", help="re-read every shard with the safetensors package")
    args = ap.parse_args()

    if args.layers < 1 or args.hidden % args.heads or args.heads % args.kv_heads or (args.hidden // args.heads) % 2:
        sys.exit("need --layers >= 1, --heads dividing --hidden, --kv-heads dividing --heads, an even head_dim")
    if os.path.exists(args.out):
        sys.exit(f"{args.out}: already exists")
    tj_path, tok_extra = find_tokenizer(args.tokenizer)
    if not os.path.isfile(tj_path):
        sys.exit(f"{tj_path}: no such file (--tokenizer wants a tokenizer.json or a directory holding one)")
    vocab, ids = tokenizer_vocab(tj_path)

    specs = tensor_specs(args, vocab)
    shards = plan_shards(specs, args.max_shard_mb << 20)
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(args.out) + ".tmp.", dir=parent)
    try:
        weight_map, total = {}, 0
        for k, shard in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            total += write_shard(os.path.join(tmp, fname), shard, args.seed, args.std)
            for name, _, _ in shard:
                weight_map[name] = fname
            print(f"  {fname}: {len(shard)} tensors, {total / 2**30:.2f} GiB so far", file=sys.stderr)
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
            f.write("\n")

        head_dim = args.hidden // args.heads
        config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab,
            "hidden_size": args.hidden,
            "intermediate_size": args.intermediate,
            "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads,
            "num_key_value_heads": args.kv_heads,
            "head_dim": head_dim,
            "max_position_embeddings": 2048,
            "rms_norm_eps": args.rms_norm_eps,
            "rope_theta": args.rope_theta,
            "rope_scaling": None,
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "initializer_range": args.std,
            "tie_word_embeddings": args.tie_word_embeddings,
            "torch_dtype": "float16",
            "use_cache": True,
            "transformers_version": "4.46.0",
        }
        config.update(special_ids(tok_extra, ids))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        gen = {k: v for k, v in config.items() if k in ("bos_token_id", "eos_token_id")}
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump(gen, f, indent=2)
            f.write("\n")
        shutil.copyfile(tj_path, os.path.join(tmp, "tokenizer.json"))
        for p in tok_extra:
            shutil.copyfile(p, os.path.join(tmp, os.path.basename(p)))
        if args.verify:
            verify(tmp, specs, args.seed, args.std)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        os.rename(tmp, args.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    layer_params = sum(numel(s[1]) for s in specs if s[0].startswith("model.layers.0."))
    print(f"{args.out}: {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, "
          f"vocab {vocab}, {len(shards)} shards, {total / 2**30:.2f} GiB fp16; one layer {layer_params} "
          f"parameters = {4 * layer_params / 2**20:.1f} MiB in f32", file=sys.stderr)


if __name__ == "__main__":
    main()
