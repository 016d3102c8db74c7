#!/usr/bin/env python3
"""Golden data for qforge's RTN and GPTQ quantizers (tests/quant/rtn_test.cpp, gptq_test.cpp).

numpy only, written from the references' algorithms (IST-DASLab/gptq quant.py + gptq.py fasterquant,
AutoGPTQ's act-order/static-groups/g_idx, llm-awq/AutoAWQ pseudo_quantize_tensor), not from the C++.

Arithmetic mirrors the references, which run in float32: every array op below is float32 (numpy keeps
float32 when both operands are float32), so RTN is reproducible bit for bit. The one place in float64 is
the inverse-Hessian factor (Cholesky, inverse, Cholesky), which is then rounded to float32; the C++ does
the same in double with LAPACK.

Conventions taken by qforge (see src/quant/quant_config.h, rtn.h):
  * scales are rounded to fp16 (nearest even) before zero points and codes are derived from them;
  * kGptq sym always uses [-amax, amax] (the reference keeps xmin = 0 for all-nonnegative groups).

GPTQ differs from the C++ only in the order of float32 sums (numpy matmul vs OpenBLAS sgemm; numpy's
product-then-subtract vs a compiler FMA), so each row follows the same trajectory unless some rounding
decision (a code, a group's fp16 scale, a zero point) sits closer to its boundary than that difference.
For every value decided on we take its absolute mass
  A[r, p] = |W0[r, p]| + sum_{i<p} |Err[r, i]| |U[i, p]|
(W0 the dead-zeroed weight, Err the scaled errors, U the inverse-Hessian factor, processing order): one
float32 evaluation of the sum W0 - sum err_i U[i, p], in any order, is within gamma_{p+1} A of exact, so
two evaluations agree within 2 gamma_{in+4} A (+3 for the err / Hinv roundings). Per row we emit the
smallest "tightness" = (distance to the decision boundary, in weight units) / A over all its decisions;
the test expects rows whose tightness exceeds 2 gamma_{in+4} to match exactly. This is a first-order
filter, not a proof: it leaves out the difference carried forward through earlier err_i. The rigorous
version (A plus sum |U[i, p]| / U[i, i] times the earlier bounds) reaches 10^3..10^4 x |w| on these
inputs and flags every row, while the real differences are a few ulps of |w|, far inside the filter.
(This numpy GPTQ was checked once against a torch transcription of IST-DASLab fasterquant with the same
fp16-scale quantizer: identical dequantized weights and losses for every case.)

Run: /tmp/pyref/bin/python python/make_quant_golden.py   (writes tests/golden/quant_rtn.json,
tests/golden/quant_gptq.json). Float arrays are little-endian float32 hex strings, codes uint8 hex.
"""
import json
import os

import numpy as np

F32 = np.float32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hex_f32(a):
    return np.ascontiguousarray(a, dtype="<f4").tobytes().hex()


def hex_u8(a):
    return np.ascontiguousarray(a, dtype=np.uint8).tobytes().hex()


def fp16_round(x):
    return np.asarray(x, dtype=F32).astype(np.float16).astype(F32)


def grid_divisor(bits, sym, grid):
    """What the group's range is divided by to get the scale."""
    if grid == "awq" and sym:
        return float(2 ** (bits - 1) - 1)
    return float(2**bits - 1)


def group_params(w, bits, sym, grid):
    """w [rows, n] float32 -> (scale [rows], zero [rows], raw scale [rows], xmin [rows]) float32."""
    assert w.dtype == F32
    maxq = F32(2**bits - 1)
    half = F32(2 ** (bits - 1))
    wmin, wmax = w.min(axis=1), w.max(axis=1)
    xmin = np.zeros_like(wmin)
    if grid == "gptq":
        # IST-DASLab quant.py find_params: the range always includes 0.
        xmin = np.minimum(wmin, F32(0))
        xmax = np.maximum(wmax, F32(0))
        if sym:
            xmax = np.maximum(-xmin, xmax)
            xmin = -xmax
        both0 = (xmin == 0) & (xmax == 0)
        xmin = np.where(both0, F32(-1), xmin)
        xmax = np.where(both0, F32(1), xmax)
        raw = (xmax - xmin) / maxq
    elif sym:
        # AutoAWQ: max|w| clamped to 1e-5, signed codes [-2^(b-1), 2^(b-1)-1] = unsigned with zero 2^(b-1).
        raw = np.maximum(np.maximum(-wmin, wmax), F32(1e-5)) / (half - F32(1))
    else:
        # AutoAWQ: range [min, max] (not widened to 0), clamped to 1e-5; zero clamped into [0, maxq].
        raw = np.maximum(wmax - wmin, F32(1e-5)) / maxq
    assert raw.dtype == F32
    scale = fp16_round(raw)
    assert np.all(np.isfinite(scale))
    scale = np.where(scale == 0, F32(2.0**-24), scale)
    if sym:
        zero = np.full_like(scale, half)
    elif grid == "gptq":
        zero = np.clip(np.round(-xmin / scale), F32(0), maxq)
    else:
        zero = np.clip(-np.round(wmin / scale), F32(0), maxq)
    zero = zero + F32(0)  # no -0
    return scale.astype(F32), zero.astype(F32), raw, xmin if grid == "gptq" else wmin


def quant_codes(w, scale, zero, bits):
    """w [rows] or [rows, n]; scale, zero broadcast. Round half to even, as torch.round."""
    maxq = F32(2**bits - 1)
    return np.clip(np.round(w / scale) + zero, F32(0), maxq)


def half_boundary_distance(t, lo_code, hi_code):
    """Distance of the real t to the nearest x.5 boundary b with lo_code <= b - 0.5 < hi_code (where the
    clamped rounding of t changes); float64."""
    t = np.asarray(t, dtype=np.float64)
    b_lo, b_hi = lo_code + 0.5, hi_code - 0.5
    inner = np.abs(t - (np.floor(t) + 0.5))
    return np.where(t < b_lo, b_lo - t, np.where(t > b_hi, t - b_hi, inner))


def fp16_midpoint_distance(raw):
    """Distance of each float32 raw to the nearest midpoint between adjacent fp16 values (where its fp16
    rounding changes); float64."""
    h = raw.astype(np.float16)
    up = np.nextafter(h, np.float16(np.inf)).astype(np.float64)
    dn = np.nextafter(h, np.float16(-np.inf)).astype(np.float64)
    hv = h.astype(np.float64)
    r = raw.astype(np.float64)
    return np.minimum(np.abs(r - (hv + up) / 2), np.abs(r - (hv + dn) / 2))


# ---------------------------------------------------------------- RTN


def rtn(W, bits, gs, sym, grid):
    rows, cols = W.shape
    g = cols if gs == 0 else gs
    ng = cols // g
    codes = np.zeros_like(W)
    scales = np.zeros((rows, ng), F32)
    zeros = np.zeros((rows, ng), F32)
    for j in range(ng):
        w = W[:, j * g:(j + 1) * g]
        s, z, _, _ = group_params(w, bits, sym, grid)
        scales[:, j], zeros[:, j] = s, z
        codes[:, j * g:(j + 1) * g] = quant_codes(w, s[:, None], z[:, None], bits)
    return codes.astype(np.uint8), scales, zeros


def rtn_weight(rng):
    W = (rng.standard_normal((8, 128)) * 0.02).astype(F32)
    W[1, 5] = 0.3  # an outlier
    W[1, 70] = -0.25
    W[2] *= 40  # a large row
    W[6] = np.abs(W[6])  # all nonnegative: kGptq includes 0; kAwq clamps the zero point to 0
    W[7, 0:32] = 0  # all-zero group: the degenerate grid
    W[7, 32:64] = 0.01  # constant group
    W[7, 64:96] = -np.abs(W[7, 64:96])  # all nonpositive
    return W


# ---------------------------------------------------------------- GPTQ


def inverse_cholesky_upper(H64):
    """U upper with U^T U = H^-1 (torch: cholesky_inverse(cholesky(H)) then cholesky(upper=True))."""
    L = np.linalg.cholesky(H64)
    Linv = np.linalg.inv(L)
    Hinv = Linv.T @ Linv
    return np.linalg.cholesky(Hinv).T


def gptq(W_in, H_in, bits, gs, sym, grid, bs, act_order, static_groups, percdamp=0.01):
    W = W_in.astype(F32).copy()
    H = H_in.astype(F32)
    rows, cols = W.shape
    maxq = 2**bits - 1
    ng = 1 if gs == 0 else cols // gs
    scales = np.zeros((rows, ng), F32)
    zeros = np.zeros((rows, ng), F32)
    if gs == 0:  # per channel: the reference's find_params(W) on the original W
        scales[:, 0], zeros[:, 0], _, _ = group_params(W, bits, sym, grid)

    diag = np.diag(H).astype(F32).copy()
    dead = diag == 0
    diag[dead] = 1
    W[:, dead] = 0
    static = gs != 0 and static_groups
    if static:
        for g in range(ng):
            scales[:, g], zeros[:, g], _, _ = group_params(W[:, g * gs:(g + 1) * gs], bits, sym, grid)

    perm = np.argsort(-diag, kind="stable") if act_order else np.arange(cols)
    group_of = np.zeros(cols, np.int64) if gs == 0 else (perm if static else np.arange(cols)) // gs
    Wp = W[:, perm].copy()
    W0p = Wp.copy()
    Hp = H.astype(np.float64)[perm][:, perm]
    Hp[np.arange(cols), np.arange(cols)] = diag[perm]
    mean_diag = diag.astype(np.float64).mean()
    damp = percdamp * mean_diag
    Hp[np.arange(cols), np.arange(cols)] += damp
    U = inverse_cholesky_upper(Hp).astype(F32)

    codes = np.zeros((rows, cols), np.uint8)
    Err = np.zeros((rows, cols), F32)
    resid = np.zeros((rows, cols), F32)  # w - q at each column's turn
    code_margin = np.zeros((rows, cols))  # weight units
    group_decisions = []  # (first position, weight-unit margins of scale and zero, per row)
    row_loss = np.zeros(rows)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        W1 = Wp[:, i1:i2].copy()
        E1 = np.zeros_like(W1)
        for i in range(i2 - i1):
            c = i1 + i
            if gs != 0 and not static and c % gs == 0:
                blk = Wp[:, c:c + gs]  # block-start state, as the reference reads W not W1
                s, z, raw, xlo = group_params(blk, bits, sym, grid)
                scales[:, c // gs], zeros[:, c // gs] = s, z
                scale_m = fp16_midpoint_distance(raw) * grid_divisor(bits, sym, grid) / 2
                zero_m = (np.full(rows, np.inf) if sym else
                          half_boundary_distance(-xlo.astype(np.float64) / s, 0, maxq) * s)
                group_decisions.append((c, np.minimum(scale_m, zero_m)))
            s = scales[:, group_of[c]]
            z = zeros[:, group_of[c]]
            w = W1[:, i]
            code = quant_codes(w, s, z, bits)
            q = (code - z) * s
            d = U[c, c]
            diff = w - q
            row_loss += diff.astype(np.float64) ** 2 / np.float64(d) ** 2 / 2
            err = diff / d
            W1[:, i + 1:] -= np.outer(err, U[c, i1 + i + 1:i2])
            E1[:, i] = err
            codes[:, c] = code.astype(np.uint8)
            resid[:, c] = diff
            v = (w / s).astype(np.float64)  # what is rounded; the code flips where v + z crosses k + 0.5
            code_margin[:, c] = half_boundary_distance(v + z, 0, maxq) * s
        Err[:, i1:i2] = E1
        if i2 < cols:
            Wp[:, i2:] -= E1 @ U[i1:i2, i2:]

    # Absolute masses (float64), see the module docstring.
    U64 = U.astype(np.float64)
    A = np.abs(W0p.astype(np.float64)) + np.abs(Err.astype(np.float64)) @ np.abs(np.triu(U64, 1))
    def tightness(margin, mass):  # mass 0: an exact zero (dead column), decided identically everywhere
        return np.where(mass > 0, margin / np.where(mass > 0, mass, 1.0), np.inf)
    tight = tightness(code_margin, A).min(axis=1)
    for c, m in group_decisions:
        tight = np.minimum(tight, tightness(m, A[:, c:c + gs].max(axis=1)))
    d2 = np.diag(U64) ** 2
    sens1 = (np.abs(resid.astype(np.float64)) * A / d2).sum(axis=1)
    sens2 = (A**2 / (2 * d2)).sum(axis=1)

    out_codes = np.zeros_like(codes)
    out_codes[:, perm] = codes
    g_idx = np.zeros(cols, np.int64)
    g_idx[perm] = group_of
    deq = (out_codes.astype(F32) - zeros[:, g_idx]) * scales[:, g_idx]
    return dict(codes=out_codes, scales=scales, zeros=zeros, g_idx=g_idx, deq=deq.astype(F32),
                loss=float(row_loss.sum()), row_loss=row_loss, row_tightness=tight, row_sens1=sens1,
                row_sens2=sens2, perm=perm, damp=damp, dead=int(dead.sum()))


def gptq_inputs(rng):
    out, cols, n = 16, 128, 512
    W = (rng.standard_normal((out, cols)) * 0.02).astype(F32)
    W[3, 10] = 0.2  # an outlier
    # Correlated inputs with uneven channel scales (so act-order has something to order).
    mix = np.eye(cols) + 0.6 * rng.standard_normal((cols, cols)) / np.sqrt(cols)
    X = rng.standard_normal((n, cols)) @ mix
    X *= np.exp(0.7 * rng.standard_normal(cols))
    X[:, 7] = 0  # a dead input
    X[:, 20] = X[:, 21]  # rank deficient: only damping makes H invertible
    H = (2.0 / n * (X.T @ X)).astype(F32)
    return W, H


GPTQ_CASES = [
    # name, bits, group, sym, grid, block, act_order, static_groups
    ("g32", 4, 32, False, "gptq", 32, False, False),
    ("g32_act", 4, 32, False, "gptq", 32, True, False),
    ("g32_act_static", 4, 32, False, "gptq", 32, True, True),
    ("g32_static", 4, 32, False, "gptq", 32, False, True),
    ("perchannel", 4, 0, False, "gptq", 32, False, False),
    ("perchannel_act", 4, 0, False, "gptq", 32, True, False),
    ("g32_sym_b3_act", 3, 32, True, "gptq", 32, True, False),
    ("g64_block32", 4, 64, False, "gptq", 32, False, False),
    ("g32_block64", 4, 32, False, "gptq", 64, False, False),
    ("g32_awq_grid_b2", 2, 32, False, "awq", 32, True, False),
]


def main():
    rng = np.random.default_rng(20240611)
    W = rtn_weight(rng)
    cases = []
    for grid in ("gptq", "awq"):
        for sym in (False, True):
            for bits in range(2, 9):
                for gs in (32, 64, 0):
                    codes, scales, zeros = rtn(W, bits, gs, sym, grid)
                    cases.append(dict(grid=grid, sym=sym, bits=bits, group_size=gs, codes=hex_u8(codes),
                                      scales=hex_f32(scales), zeros=zeros.astype(int).ravel().tolist()))
    rtn_doc = dict(generator="python/make_quant_golden.py", out=W.shape[0], inp=W.shape[1],
                   weight=hex_f32(W), cases=cases)
    with open(os.path.join(ROOT, "tests/golden/quant_rtn.json"), "w") as f:
        json.dump(rtn_doc, f, indent=1)

    W, H = gptq_inputs(rng)
    gcases = []
    for name, bits, gs, sym, grid, bs, act, static in GPTQ_CASES:
        r = gptq(W, H, bits, gs, sym, grid, bs, act, static)
        print(f"{name:18s} loss {r['loss']:.6g} dead {r['dead']} min row tightness "
              f"{r['row_tightness'].min():.3g}")
        gcases.append(dict(name=name, bits=bits, group_size=gs, sym=sym, grid=grid, block_size=bs,
                           act_order=act, static_groups=static, codes=hex_u8(r["codes"]),
                           scales=hex_f32(r["scales"]), zeros=r["zeros"].astype(int).ravel().tolist(),
                           g_idx=r["g_idx"].tolist(), deq=hex_f32(r["deq"]), loss=r["loss"],
                           row_loss=r["row_loss"].tolist(), row_tightness=r["row_tightness"].tolist(),
                           row_sens1=r["row_sens1"].tolist(), row_sens2=r["row_sens2"].tolist(),
                           perm=r["perm"].tolist(), damp=r["damp"], dead_columns=r["dead"]))
    gptq_doc = dict(generator="python/make_quant_golden.py", out=W.shape[0], inp=W.shape[1],
                    damp_percent=0.01, weight=hex_f32(W), hessian=hex_f32(H), cases=gcases)
    with open(os.path.join(ROOT, "tests/golden/quant_gptq.json"), "w") as f:
        json.dump(gptq_doc, f, indent=1)


if __name__ == "__main__":
    main()
