#!/usr/bin/env python3
"""numpy pack/unpack of the two published 4-bit checkpoint layouts qforge reads and writes.

Written from the published sources (read, not copied); each function names the file that defines its layout.

AutoAWQ "GEMM" (quant_method "awq", version "gemm")
  Defined by casper-hansen/AutoAWQ awq/modules/linear/gemm.py (WQLinear_GEMM.__init__ buffer shapes and
  from_linear packing) and awq/utils/packing_utils.py (AWQ_ORDER, AWQ_REVERSE_ORDER, dequantize_gemm).
    qweight  int32 [in, out/8]    packed along OUT: nibble i (bits 4i..4i+3) of word [r, j] holds the code of
                                  input row r, output column 8*j + AWQ_ORDER[i]
    qzeros   int32 [in/g, out/8]  same packing, zero points stored as is (0..15)
    scales   fp16  [in/g, out]
    W[o, i] = (code - zero[i // g, o]) * scale[i // g, o]

GPTQ (quant_method "gptq"; checkpoint_format "gptq" = v1, "gptq_v2" = v2)
  Defined by AutoGPTQ/AutoGPTQ auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py (QuantLinear buffer shapes,
  pack(), and the torch fallback in forward()) and ModelCloud/GPTQModel gptqmodel/nn_modules/qlinear/__init__.py
  (_register_gptq_buffers, dequantize_weight) plus gptqmodel/utils/model.py
  (convert_gptq_v1_to_v2_format_module / convert_gptq_v2_to_v1_format_module).
    qweight  int32 [in/8, out]    packed along IN: nibble i of word [r, o] holds input row 8*r + i, column o
    qzeros   int32 [G, out/8]     packed along OUT in plain order: nibble i of word [k, j] is column 8*j + i
    scales   fp16  [G, out]
    g_idx    int32 [in]           group of each input row (i // g, or a permutation-induced map with desc_act)
    W[o, i] = (code[i, o] - zero[g_idx[i], o]) * scale[g_idx[i], o]
  v2 stores zero. v1 stores zero - 1, and the "- 1" is applied to the whole int32 word: GPTQModel writes v1 with
  qzeros -= 0x11111111 and reads it back with qzeros += 0x11111111 (vLLM's XPU fallback in
  vllm/model_executor/layers/quantization/gptq.py does the same add). That word arithmetic borrows/carries
  across nibbles when a zero is 0, so we decode v1 the same way. Older readers (AutoGPTQ forward(), the exllama
  kernels) instead add 1 per nibble, which gives zero = 16 for a stored 0xF; the two decodings agree exactly
  when no stored v1 nibble is 0xF, which is always the case for sym=True (zero = 8, stored 7).

Every function returns plain numpy arrays; W is computed in float32, where (code - zero) * fp16 scale is exact
(an integer of at most 5 bits times an 11-bit significand), so a loader that dequantizes in f32 must match
bit for bit.

Self-test:  python3 python/packed_formats.py
"""
import numpy as np

BITS = 4
PACK = 32 // BITS  # codes per int32 word
MASK = (1 << BITS) - 1

# awq/utils/packing_utils.py AWQ_ORDER: nibble i of a packed word holds logical column AWQ_ORDER[i].
AWQ_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])
GPTQ_ORDER = np.arange(PACK)  # plain order
V1_ZERO_OFFSET = 0x11111111  # 1 in every nibble; gptqmodel/utils/model.py v1 <-> v2 conversion


def _pack_last(codes, order):
    """codes [..., 8*n] in 0..15 -> int32 [..., n]; nibble i of word j holds codes[..., 8*j + order[i]]."""
    codes = np.asarray(codes)
    if codes.shape[-1] % PACK:
        raise ValueError(f"last dim {codes.shape[-1]} is not a multiple of {PACK}")
    if codes.size and (codes.min() < 0 or codes.max() > MASK):
        raise ValueError(f"codes out of 0..{MASK}: [{codes.min()}, {codes.max()}]")
    c = codes.astype(np.uint32).reshape(*codes.shape[:-1], -1, PACK)[..., order]
    shifts = (np.arange(PACK, dtype=np.uint32) * BITS)
    words = np.bitwise_or.reduce(c << shifts, axis=-1)
    return words.astype(np.uint32).view(np.int32)


def _unpack_last(words, order):
    """int32 [..., n] -> uint8 [..., 8*n], the inverse of _pack_last."""
    w = np.asarray(words).astype(np.int32).view(np.uint32)
    shifts = (np.arange(PACK, dtype=np.uint32) * BITS)
    nib = ((w[..., None] >> shifts) & MASK).astype(np.uint8)  # [..., n, nibble i]
    out = np.empty_like(nib)
    out[..., order] = nib  # logical column order[i] <- nibble i
    return out.reshape(*w.shape[:-1], -1)


def _check_group_shapes(name, n_in, n_out, groups, group_size):
    if group_size <= 0 or n_in % group_size:
        raise ValueError(f"{name}: in_features {n_in} is not a multiple of group_size {group_size}")
    if groups != n_in // group_size:
        raise ValueError(f"{name}: {groups} groups, expected in/g = {n_in}/{group_size}")
    if n_out % PACK:
        raise ValueError(f"{name}: out_features {n_out} is not a multiple of {PACK}")


# ---------------------------------------------------------------------------------------------- AutoAWQ GEMM
def unpack_awq_gemm(qweight, qzeros, scales, group_size):
    """AutoAWQ GEMM (awq/modules/linear/gemm.py, awq/utils/packing_utils.py) -> plain arrays.

    qweight int32 [in, out/8], qzeros int32 [in/g, out/8], scales fp16 [in/g, out].
    Returns codes uint8 [out, in], zeros uint8 [out, G], scales (input dtype) [out, G], w float32 [out, in].
    """
    qweight, qzeros, scales = np.asarray(qweight), np.asarray(qzeros), np.asarray(scales)
    n_in, n_out = qweight.shape[0], qweight.shape[1] * PACK
    _check_group_shapes("awq", n_in, n_out, qzeros.shape[0], group_size)
    if qzeros.shape[1] * PACK != n_out or scales.shape != (qzeros.shape[0], n_out):
        raise ValueError(f"awq: qzeros {qzeros.shape} / scales {scales.shape} do not fit qweight {qweight.shape}")
    codes = _unpack_last(qweight, AWQ_ORDER).T  # [out, in]
    zeros = _unpack_last(qzeros, AWQ_ORDER).T  # [out, G]
    s = scales.T
    w = _dequant(codes, zeros, s, np.arange(n_in) // group_size)
    return np.ascontiguousarray(codes), np.ascontiguousarray(zeros), np.ascontiguousarray(s), w


def pack_awq_gemm(codes, zeros, scales, group_size):
    """codes [out, in] 0..15, zeros [out, G] 0..15, scales [out, G] -> (qweight, qzeros, scales fp16 [G, out])."""
    codes, zeros, scales = np.asarray(codes), np.asarray(zeros), np.asarray(scales)
    n_out, n_in = codes.shape
    _check_group_shapes("awq", n_in, n_out, zeros.shape[1], group_size)
    return (_pack_last(codes.T, AWQ_ORDER), _pack_last(zeros.T, AWQ_ORDER),
            np.ascontiguousarray(scales.T).astype(np.float16))


# ---------------------------------------------------------------------------------------------- GPTQ v1 / v2
def _check_version(version):
    if version not in (1, 2):
        raise ValueError(f"gptq version must be 1 (checkpoint_format gptq) or 2 (gptq_v2), got {version}")


def unpack_gptq(qweight, qzeros, scales, g_idx, version):
    """GPTQ (auto_gptq qlinear_cuda_old.py, gptqmodel qlinear/__init__.py) -> plain arrays.

    qweight int32 [in/8, out], qzeros int32 [G, out/8], scales fp16 [G, out], g_idx int32 [in] (None means
    i // (in/G)), version 1 or 2. Returns codes uint8 [out, in], zeros uint8 [out, G] (true zero points, v1
    offset removed), scales (input dtype) [out, G], w float32 [out, in].
    """
    _check_version(version)
    qweight, qzeros, scales = np.asarray(qweight), np.asarray(qzeros), np.asarray(scales)
    n_in, n_out = qweight.shape[0] * PACK, qweight.shape[1]
    groups = qzeros.shape[0]
    if qzeros.shape[1] * PACK != n_out or scales.shape != (groups, n_out):
        raise ValueError(f"gptq: qzeros {qzeros.shape} / scales {scales.shape} do not fit qweight {qweight.shape}")
    if g_idx is None:
        g_idx = np.arange(n_in) // (n_in // groups)
    g_idx = np.asarray(g_idx).astype(np.int64)
    if g_idx.shape != (n_in,) or g_idx.min() < 0 or g_idx.max() >= groups:
        raise ValueError(f"gptq: g_idx shape {g_idx.shape} or range [{g_idx.min()}, {g_idx.max()}] "
                         f"does not fit in={n_in}, groups={groups}")
    # qweight packs along IN: transpose so the packed axis is last, unpack, transpose back.
    codes = _unpack_last(qweight.T, GPTQ_ORDER)  # [out, in]
    qz = qzeros.astype(np.int32).view(np.uint32)
    if version == 1:
        qz = (qz.astype(np.uint64) + V1_ZERO_OFFSET).astype(np.uint32)  # mod 2^32, carries like GPTQModel
    zeros = _unpack_last(qz.view(np.int32), GPTQ_ORDER).T  # [out, G]
    s = scales.T
    w = _dequant(codes, zeros, s, g_idx)
    return np.ascontiguousarray(codes), np.ascontiguousarray(zeros), np.ascontiguousarray(s), w


def pack_gptq(codes, zeros, scales, g_idx, version):
    """codes [out, in], zeros [out, G] 0..15 (true zero points), scales [out, G], g_idx [in] ->
    (qweight int32 [in/8, out], qzeros int32 [G, out/8], scales fp16 [G, out], g_idx int32 [in])."""
    _check_version(version)
    codes, zeros, scales = np.asarray(codes), np.asarray(zeros), np.asarray(scales)
    n_out, n_in = codes.shape
    if n_in % PACK:
        raise ValueError(f"gptq: in_features {n_in} is not a multiple of {PACK}")
    g_idx = np.asarray(g_idx).astype(np.int32)
    if g_idx.shape != (n_in,) or g_idx.min() < 0 or g_idx.max() >= zeros.shape[1]:
        raise ValueError(f"gptq: g_idx does not fit in={n_in}, groups={zeros.shape[1]}")
    qweight = _pack_last(codes, GPTQ_ORDER).T  # [out, in/8] -> [in/8, out]
    qzeros = _pack_last(zeros.T, GPTQ_ORDER).view(np.uint32)
    if version == 1:
        qzeros = (qzeros.astype(np.int64) - V1_ZERO_OFFSET).astype(np.uint64).astype(np.uint32)  # mod 2^32
    return (np.ascontiguousarray(qweight), qzeros.view(np.int32),
            np.ascontiguousarray(scales.T).astype(np.float16), g_idx)


def gptq_v1_has_ambiguous_zeros(qzeros):
    """True if a v1 qzeros word holds a 0xF nibble, where per-nibble (+1 -> 16) and word-wise (+0x11111111,
    carrying) v1 readers disagree. Only asymmetric v1 checkpoints with a zero point of 0 hit this."""
    q = np.asarray(qzeros).astype(np.int32).view(np.uint32)
    return bool(np.any(_unpack_last(q.view(np.int32), GPTQ_ORDER) == MASK))


def _dequant(codes, zeros, scales, g_idx):
    """codes [out, in], zeros/scales [out, G], g_idx [in] -> float32 [out, in], exact for fp16 scales."""
    z = zeros[:, g_idx].astype(np.float32)
    s = scales[:, g_idx].astype(np.float32)
    return (codes.astype(np.float32) - z) * s


# ---------------------------------------------------------------------------------------------- self-test
def _self_test():
    rng = np.random.default_rng(1234)
    n_out, n_in, g = 48, 96, 32
    groups = n_in // g
    codes = rng.integers(0, 16, (n_out, n_in), dtype=np.uint8)
    zeros = rng.integers(0, 16, (n_out, groups), dtype=np.uint8)
    zeros[0, 0], zeros[1, 0] = 0, 15  # the v1 edge cases
    scales = rng.uniform(1e-3, 2e-2, (n_out, groups)).astype(np.float16)

    # A hand-checked word: AWQ nibble i holds column AWQ_ORDER[i].
    by_out = np.tile(np.arange(8, dtype=np.uint8)[:, None], (1, 8))  # [out 8, in 8], code = output column
    qw, _, _ = pack_awq_gemm(by_out, np.zeros((8, 1), np.uint8), np.ones((8, 1)), 8)
    assert qw.shape == (8, 1)
    assert int(qw.view(np.uint32)[0, 0]) == 0x75316420, hex(int(qw.view(np.uint32)[0, 0]))

    qweight, qzeros, s16 = pack_awq_gemm(codes, zeros, scales, g)
    assert qweight.shape == (n_in, n_out // 8) and qzeros.shape == (groups, n_out // 8) and s16.shape == (groups, n_out)
    c2, z2, s2, w = unpack_awq_gemm(qweight, qzeros, s16, g)
    assert np.array_equal(c2, codes) and np.array_equal(z2, zeros) and np.array_equal(s2, scales)
    ref = (codes.astype(np.float64) - np.repeat(zeros, g, 1)) * np.repeat(scales.astype(np.float64), g, 1)
    assert np.array_equal(w.astype(np.float64), ref), "f32 dequant is not exact"

    perm = rng.permutation(n_in)
    rank = np.empty(n_in, np.int64)
    rank[perm] = np.arange(n_in)
    for g_idx in (np.arange(n_in) // g, rank // g):  # plain, and desc_act-style
        for version in (1, 2):
            qw, qz, s16, gi = pack_gptq(codes, zeros, scales, g_idx, version)
            assert qw.shape == (n_in // 8, n_out) and qz.shape == (groups, n_out // 8)
            c2, z2, s2, w = unpack_gptq(qw, qz, s16, gi, version)
            assert np.array_equal(c2, codes) and np.array_equal(z2, zeros), (version,)
            ref = (codes.astype(np.float64) - zeros[:, g_idx]) * scales[:, g_idx].astype(np.float64)
            assert np.array_equal(w.astype(np.float64), ref)
    # v1 symmetric: every stored nibble is 7, every word 0x77777777, no ambiguity.
    qw, qz, _, _ = pack_gptq(codes, np.full_like(zeros, 8), scales, np.arange(n_in) // g, 1)
    assert np.all(qz.view(np.uint32) == 0x77777777) and not gptq_v1_has_ambiguous_zeros(qz)
    # GPTQ qweight: nibble i of row r is input 8r+i.
    qw, _, _, _ = pack_gptq(np.tile(np.arange(8, dtype=np.uint8), (8, 1)), np.zeros((8, 1), np.uint8),
                            np.ones((8, 1)), np.zeros(8), 2)
    assert int(qw.view(np.uint32)[0, 0]) == 0x76543210
    print("packed_formats self-test: AWQ GEMM and GPTQ v1/v2 pack -> unpack round trips are exact")


if __name__ == "__main__":
    _self_test()
