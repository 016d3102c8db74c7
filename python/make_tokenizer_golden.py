#!/usr/bin/env python3
"""Golden token ids for tests/model/tokenizer_test.cpp, made with Hugging Face `tokenizers`.

Writes
  tests/golden/tokenizer_smollm2.json        SmolLM2-135M-Instruct (byte-level BPE, from its GGUF)
  tests/golden/tokenizer_bytefallback.json   a small Llama-2-style byte-fallback BPE (built here)
  tests/data/tokenizer/llama2_bytefallback_tokenizer.json   that tokenizer, as HF saves it
  tests/data/tokenizer/llama2_bytefallback.gguf             the same vocabulary as a llama.cpp
                                                            "llama" (sentencepiece) GGUF: scores, no merges

SmolLM2: transformers (AutoTokenizer.from_pretrained(dir, gguf_file=...)) builds the tokenizer
from the GGUF metadata, but it ignores tokenizer.ggml.pre = "smollm" and gives plain ByteLevel,
while the model's own tokenizer.json (HuggingFaceTB/SmolLM2-135M-Instruct) and llama.cpp split
every digit first: pre_tokenizer = Sequence[Digits(individual_digits=True), ByteLevel(...)].
The golden "model" is that tokenizer (transformers' GGUF tokenizer with the pre-tokenizer of the
model's tokenizer.json); "transformers_gguf" is transformers' GGUF tokenizer unchanged.

Run (not in CI; needs transformers 5, tokenizers, gguf):
  /tmp/pyref/bin/python python/make_tokenizer_golden.py [--gguf PATH] [--data-dir DIR]
"""

import argparse
import hashlib
import json
import os
import random
import struct
import sys
import tempfile

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Strings that stress each stage: scripts, combining marks, whitespace runs, digits, emoji (ZWJ),
# code, contractions, special tokens in text, characters missing from the byte-level vocabulary.
HARD_STRINGS = [
    "",
    " ",
    "   ",
    "hello world",
    "Hello, World!",
    " leading space",
    "trailing space ",
    "trailing spaces   ",
    "multiple   internal    spaces",
    "tabs\tand\t\ttabs",
    "\t\tleading tabs",
    "line1\nline2",
    "para1\n\npara2\n\n\npara3",
    "\n\n\n\n",
    "windows\r\nline\r\nendings\r\n",
    " \n \n ",
    "mixed \t \n whitespace \t",
    "I'm sure they'll say it's fine, don't you think? We've seen it, I'd say.",
    "DON'T SHOUT, IT'S LOUD; 'quoted' ''double'' ``tex''",
    "don\u2019t curly apostrophe",
    "Numbers: 0 1 12 123 1234 12345 3.14159 1,000,000 -42 +7 1e10 0x1F",
    "314159265358979323846264338327950288419716939937510582097494459230781640628620899862803482534211706798",
    "year 2024, phone 555-0199, v1.2.3",
    "\u0663\u0664\u0665 Arabic-Indic digits, \u0969\u096a Devanagari digits",
    "\u2460\u2461\u2462 circled, \u216b roman, \u00bd fraction, \u00b2\u00b3 superscripts",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 fa\u00e7ade \u00c5ngstr\u00f6m",
    "e\u0301 combining acute, a\u0308 umlaut, Z\u0351\u0362a\u0362l\u0358go",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u8fd9\u662f\u4e00\u4e2a\u6d4b\u8bd5\u3002",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u30ab\u30bf\u30ab\u30ca \u30fc",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4",
    "\u0420\u043e\u0441\u0441\u0438\u044f \u0438 \u0423\u043a\u0440\u0430\u0457\u043d\u0430",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u03b3\u03c1\u03ac\u03bc\u03bc\u03b1\u03c4\u03b1",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u05e2\u05d1\u05e8\u05d9\u05ea \u0939\u093f\u0928\u094d\u0926\u0940 \u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
    "Emoji: \U0001f600\U0001f44d\U0001f3fd\U0001f1fa\U0001f1f8 and \u2764\ufe0f",
    "family: \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 flag: \U0001f3f3\ufe0f\u200d\U0001f308 keycap: 1\ufe0f\u20e3",
    "def foo(x):\n    return x ** 2  # square\n",
    "if (a && b || !c) { x += 1; } else { y--; }",
    "<html><body class=\"x\">Hi &amp; bye</body></html>",
    "SELECT * FROM t WHERE id = 5; -- comment",
    "https://example.com/path?q=1&r=two#frag user@example.com",
    "C:\\Users\\name\\file.txt $$\\frac{a}{b}$$",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|endoftext|>more",
    " <|im_start|> spaced <|im_end|> ",
    "<|im_start|><|im_end|><|im_start|>",
    "< |im_start| > <|im_start <|im_end",
    "<s>Hello</s> <unk> </s>",
    "zero\u200bwidth nbsp\u00a0here ideographic\u3000space",
    "line\u2028separator para\u2029separator nel\u0085char ogham\u1680space",
    "control \x04 \x06 \x1d \x13 chars",
    "\x00 null and \x7f del",
    "\ufeffBOM at start",
    "replacement \ufffd char, private \ue000 use",
    "astral \U0001d518\U0001d52b\U0001d526 \U0001d7d8\U0001d7d9\U0001d7da",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!!!!!!!!!??????...... ---------- ==== ____",
    " = = Heading = = \n The @-@ hyphen , the @,@ comma and @.@ dot . \n",
    "ALLCAPS lowercase MiXeD snake_case camelCase kebab-case",
    "\u2581already\u2581has\u2581metaspace \u0120and\u0120G",
]

# Byte strings that are not valid UTF-8: the C++ tokenizer replaces each maximal ill-formed
# subpart with U+FFFD first, as Python's bytes.decode("utf-8", "replace") does.
INVALID_UTF8 = [
    b"abc\xffdef",
    b"\xc3(",
    b"\xe2\x82 truncated",
    b"\xed\xa0\x80 surrogate",
    b"\xf0\x9f\x98 cut emoji \xf0\x9f\x98\x80",
    b"\xc0\xaf overlong",
    b"\x80\x80 lone continuation",
    b"end\xe2",
]

WIKITEXT_OFFSETS = [0, 1000, 10000, 50000, 100000, 200000, 250000, 300000]

# Configurations the two real tokenizers do not use, as patches on them (applied the same way by
# the C++ test): other pre-tokenizers and split behaviors, Metaspace, added-token flags, unknown
# tokens without byte fallback. Base "smollm2" is the SmolLM2 tokenizer ("model" above), base
# "bytefallback" the Llama-2-style one.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _added(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=False):
    return {"id": 0, "content": content, "single_word": single_word, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": normalized, "special": special}


def _byte_level(add_prefix_space=False, use_regex=True):
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True, "use_regex": use_regex}


VARIANTS = [
    {"name": "llama3_split_ignore_merges", "base": "smollm2",
     "set": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
         {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
         _byte_level(use_regex=False)]}},
     "model": {"ignore_merges": True}},
    {"name": "bytelevel_add_prefix_space", "base": "smollm2", "set": {"pre_tokenizer": _byte_level(True)}},
    {"name": "split_behaviors", "base": "smollm2",
     "set": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
         {"type": "Digits", "individual_digits": False},
         {"type": "Split", "pattern": {"String": "e"}, "behavior": "MergedWithPrevious", "invert": False},
         {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "MergedWithNext", "invert": True},
         {"type": "Split", "pattern": {"String": "o"}, "behavior": "Removed", "invert": False},
         {"type": "Split", "pattern": {"Regex": "[aeiou]+"}, "behavior": "Contiguous", "invert": False},
         _byte_level(True)]}}},
    {"name": "added_token_flags", "base": "smollm2",
     "add_tokens": [_added("<|im_start|>X", lstrip=True, rstrip=True, special=True),
                    _added("hello", single_word=True, normalized=True),
                    _added(" world", lstrip=True),
                    _added("[MASK]", lstrip=True, rstrip=True, special=True)],
     "modify_added": {"<|im_end|>": {"lstrip": True, "rstrip": True}}},
    {"name": "metaspace_always_split", "base": "bytefallback",
     "set": {"normalizer": None,
             "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
             "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}}},
    {"name": "metaspace_first_normalized_added", "base": "bytefallback",
     "set": {"normalizer": None,
             "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True}},
     "add_tokens": [_added("lo", normalized=True), _added("NEW TOKEN", normalized=True)]},
    {"name": "normalized_added_with_normalizer", "base": "bytefallback",
     "add_tokens": [_added("the", normalized=True), _added("New York", normalized=True)]},
    {"name": "unk_fused", "base": "bytefallback", "model": {"byte_fallback": False, "fuse_unk": True}},
    {"name": "unk_not_fused", "base": "bytefallback", "model": {"byte_fallback": False, "fuse_unk": False}},
    {"name": "byte_fallback_missing_byte", "base": "bytefallback", "remove_vocab": ["<0x41>", "<0xE4>"]},
]

VARIANT_EXTRA_STRINGS = [
    "hello world", "a hello b", "xhello hello_ hello", " world  world", "<|im_start|>X  y", " <|im_end|> \n",
    "[MASK]", " [MASK] x", "the other the", "New York NEW TOKEN here", "lo low", "  ABC A", "1234567 12.5e3 eel",
    "\u00c4\u00e4 \u4e2d\u6587 A",
]


def apply_variant(base, v):
    """The base tokenizer.json (a dict) with the variant's patch applied."""
    t = json.loads(json.dumps(base))
    for key, value in v.get("set", {}).items():
        t[key] = value
    t["model"].update(v.get("model", {}))
    for content in v.get("remove_vocab", []):
        del t["model"]["vocab"][content]
    for a in t["added_tokens"]:
        a.update(v.get("modify_added", {}).get(a["content"], {}))
    t["added_tokens"] += v.get("add_tokens", [])
    return t


def sha256_ids(ids):
    return hashlib.sha256(struct.pack(f"<{len(ids)}i", *ids)).hexdigest()


def golden_strings(tok):
    """ids for each hard string, with and without special tokens, and HF's decode of the ids."""
    out = []
    for s in HARD_STRINGS:
        ids = tok.encode(s, add_special_tokens=False)
        ids_special = tok.encode(s, add_special_tokens=True)
        out.append({"text": s, "ids": ids, "ids_special": ids_special,
                    "decoded": tok.decode(ids, skip_special_tokens=False)})
    for b in INVALID_UTF8:
        ids = tok.encode(b.decode("utf-8", "replace"), add_special_tokens=False)
        out.append({"hex": b.hex(), "ids": ids, "ids_special": tok.encode(b.decode("utf-8", "replace")),
                    "decoded": tok.decode(ids, skip_special_tokens=False)})
    return out


def wikitext_golden(tok, path, first_n):
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    ids = tok.encode(text, add_special_tokens=False)
    g = {"call": "text = open(path, 'rb').read().decode('utf-8'); "
                 "ids = tokenizer.encode(text, add_special_tokens=False)  # whole file, one call",
         "file_bytes": os.path.getsize(path), "count": len(ids), "sha256_int32_le": sha256_ids(ids)}
    if first_n:
        g["first_ids"] = ids[:first_n]
        g["ids_at"] = {str(o): ids[o:o + 8] for o in WIKITEXT_OFFSETS if o < len(ids)}
    return g


def smollm2(gguf_path, wikitext):
    d, name = os.path.split(gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    plain = {"pre_tokenizer": json.loads(tok.backend_tokenizer.pre_tokenizer.__getstate__()),
             "strings": golden_strings(tok), "wikitext2": wikitext_golden(tok, wikitext, 0)}
    # The pre-tokenizer of the model's own tokenizer.json (and llama.cpp's "smollm").
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    model = {"pre_tokenizer": json.loads(tok.backend_tokenizer.pre_tokenizer.__getstate__()),
             "strings": golden_strings(tok), "wikitext2": wikitext_golden(tok, wikitext, 2000)}
    return {
        "backend": tok.backend_tokenizer,
        "source": f"{name} via transformers AutoTokenizer.from_pretrained(dir, gguf_file=name)",
        "note": "model: transformers' GGUF tokenizer with the pre-tokenizer of SmolLM2's own tokenizer.json "
                "(Digits(individual_digits) then ByteLevel), which tokenizer.ggml.pre='smollm' names; "
                "transformers_gguf: the tokenizer transformers builds from the GGUF, unchanged (plain ByteLevel). "
                "ids: encode(s, add_special_tokens=False); ids_special: add_special_tokens=True; "
                "decoded: decode(ids, skip_special_tokens=False); hex entries: bytes.decode('utf-8', 'replace') first.",
        "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
        "add_bos_token": bool(getattr(tok, "add_bos_token", False)),
        "vocab_size": len(tok),
        "model": model,
        "transformers_gguf": plain,
    }


def build_bytefallback_tokenizer(brown_path):
    """A small Llama-2-style BPE: <unk> <s> </s>, 256 <0xXX> byte tokens, then merges learned on
    a few KB of the Brown corpus; normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer,
    byte fallback, decoder Replace/ByteFallback/Fuse/Strip, post-processor "<s> $A" (Llama 2's
    tokenizer.json configuration)."""
    with open(brown_path, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    random.Random(0).shuffle(lines)
    text, size = [], 0
    for ln in lines:
        text.append(ln)
        size += len(ln)
        if size > 12000:
            break
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    # SentencePiece does not merge across word starts; split before each "▁" while training.
    trainer_tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    trainer_tok.train_from_iterator(text, trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return tok, vocab


class _BackendAsTokenizer:
    """encode/decode of a `tokenizers.Tokenizer` with the transformers call shape."""

    def __init__(self, tok):
        self.tok = tok

    def encode(self, s, add_special_tokens=True):
        return self.tok.encode(s, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens=False):
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def write_llama_gguf(path, vocab):
    """The vocabulary as llama.cpp writes a sentencepiece model: scores decreasing with the id
    (so that merges can be recovered from them), token types, no merges, no tensors."""
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    first_regular = 3 + 256
    scores = [0.0 if i < first_regular else -float(i - first_regular) for i in range(len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - first_regular)
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(1)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def dump(obj, path):
    """JSON with one golden entry a line: reviewable diffs, small files."""
    def nested(v):
        return isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict))

    def enc(o, indent):
        pad = "  " * indent
        if isinstance(o, dict) and any(nested(v) for v in o.values()):
            items = [f"{pad}  {json.dumps(k)}: {enc(v, indent + 1)}" for k, v in o.items()]
            return "{\n" + ",\n".join(items) + f"\n{pad}}}"
        if isinstance(o, list) and o and isinstance(o[0], dict):
            items = [f"{pad}  " + (enc(v, indent + 1) if any(nested(x) for x in v.values())
                                   else json.dumps(v, ensure_ascii=False, separators=(",", ":"))) for v in o]
            return "[\n" + ",\n".join(items) + f"\n{pad}]"
        return json.dumps(o, ensure_ascii=False, separators=(",", ":"))

    with open(path, "w", encoding="utf-8") as f:
        f.write(enc(obj, 0) + "\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    ap.add_argument("--gguf", default=os.path.join(cache, "qforge", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--data-dir", default=os.path.join(REPO, "..", "shared", "data"))
    args = ap.parse_args()
    wikitext = os.path.join(args.data_dir, "wikitext-2-raw-test.txt")
    brown = os.path.join(args.data_dir, "brown-corpus.txt")
    golden_dir = os.path.join(REPO, "tests", "golden")
    data_dir = os.path.join(REPO, "tests", "data", "tokenizer")
    os.makedirs(golden_dir, exist_ok=True)
    os.makedirs(data_dir, exist_ok=True)

    smol = smollm2(args.gguf, wikitext)
    dump({k: v for k, v in smol.items() if k != "backend"}, os.path.join(golden_dir, "tokenizer_smollm2.json"))

    tok, vocab = build_bytefallback_tokenizer(brown)
    json_path = os.path.join(data_dir, "llama2_bytefallback_tokenizer.json")
    tok.save(json_path)
    print(f"wrote {json_path} ({os.path.getsize(json_path)} bytes)")
    reloaded = _BackendAsTokenizer(Tokenizer.from_file(json_path))
    gguf_path = os.path.join(data_dir, "llama2_bytefallback.gguf")
    write_llama_gguf(gguf_path, vocab)
    print(f"wrote {gguf_path} ({os.path.getsize(gguf_path)} bytes)")
    from_gguf = AutoTokenizer.from_pretrained(data_dir, gguf_file=os.path.basename(gguf_path))
    with tempfile.TemporaryDirectory() as tmp:
        from_gguf.save_pretrained(tmp)
        with open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8") as f:
            gguf_cfg = json.load(f)
    dump({
        "source": "tests/data/tokenizer/llama2_bytefallback_tokenizer.json (built by this script) and "
                  "llama2_bytefallback.gguf (its vocabulary as a llama.cpp sentencepiece GGUF, loaded by "
                  "transformers AutoTokenizer.from_pretrained(dir, gguf_file=name), merges recovered from scores)",
        "note": "ids: encode(s, add_special_tokens=False); ids_special: add_special_tokens=True; "
                "decoded: decode(ids, skip_special_tokens=False); hex entries: bytes.decode('utf-8', 'replace') first.",
        "wikitext2": wikitext_golden(reloaded, wikitext, 0),
        "tokenizer_json": {"strings": golden_strings(reloaded)},
        "gguf": {"pre_tokenizer": gguf_cfg["pre_tokenizer"], "normalizer": gguf_cfg["normalizer"],
                 "model_unk_token": gguf_cfg["model"].get("unk_token"),
                 "n_merges": len(gguf_cfg["model"]["merges"]),
                 "wikitext2": wikitext_golden(from_gguf, wikitext, 0),
                 "strings": golden_strings(from_gguf)},
    }, os.path.join(golden_dir, "tokenizer_bytefallback.json"))

    bases = {"smollm2": json.loads(smol["backend"].to_str()), "bytefallback": json.loads(tok.to_str())}
    strings = [s for s in HARD_STRINGS if len(s) < 60][:36] + VARIANT_EXTRA_STRINGS
    variants = []
    for v in VARIANTS:
        t = _BackendAsTokenizer(Tokenizer.from_str(json.dumps(apply_variant(bases[v["base"]], v))))
        rows = [{"text": s, "ids": t.encode(s, add_special_tokens=False),
                 "decoded": t.decode(t.encode(s, add_special_tokens=False))} for s in strings]
        variants.append({**v, "strings": rows})
    dump({"note": "Each variant: the base tokenizer.json with `set` replacing top-level fields, `model` updating "
                  "model fields, `remove_vocab` deleting vocabulary entries, `modify_added` updating added "
                  "tokens by content, `add_tokens` appended to added_tokens (ids as HF assigns them); then "
                  "ids = encode(s, add_special_tokens=False), decoded = decode(ids, skip_special_tokens=False).",
          "variants": variants}, os.path.join(golden_dir, "tokenizer_variants.json"))


if __name__ == "__main__":
    sys.exit(main())
