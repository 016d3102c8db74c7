#!/usr/bin/env python3
"""Golden data for qforge's AWQ scale and clip search (tests/quant/awq_test.cpp).

numpy only, written from the references' algorithms, not from the C++:
  * mit-han-lab/llm-awq awq/quantize/auto_scale.py (_search_module_scale): x_max = mean |x| per channel;
    for ratio = i / 20, i < 20: s = x_max^ratio clamped to >= 1e-4, s /= sqrt(max s * min s); each linear
    of the group becomes Q(W * s) / s; loss = mean((org_out - out)^2); strict '<' keeps the first best.
  * casper-hansen/AutoAWQ awq/quantize/quantizer.py: the same, plus duo_scaling
    s = x_mean^r / (w_mean^(1-r) + 1e-4), w_mean = mean over rows of |W| / (group amax + 1e-6); and
    _compute_best_clip: tokens subsampled with step max(1, T // n_sample_token); per (row, group)
    max_val = amax * (1 - i / 20) for i < int(0.5 * 20); clamp to [-max_val, max_val]; fake-quantize;
    err = mean over tokens of (x_g . Q(W_g) - x_g . W_g)^2; strict '<' keeps the first best.
  * pseudo_quantize_tensor (the kAwq min/max grid) with qforge's convention that the group scale is
    rounded to fp16 before zero points and codes are derived (src/quant/quant_config.h).

Where the C++ and this script must agree exactly, they do the same float32 operations:
  x_mean (double sum of |x|, rounded to float32 once), s (double pow / clamp / normalise, rounded to float32
  once), W * s, the quantizer, / s, W - Q(clamp(W)). For the double -> float32 roundings we check that no
  value sits within MIDPOINT_MARGIN = 1e-13 (relative) of a float32 rounding midpoint, more than the two
  sides' doubles can differ (summation orders of <= 256 nonnegative terms, libm pow), so the float32 results
  are identical.
The block forward is computed in float64 from those float32 weights and rounded to float32 at the end (the
C++ test's callback does the same), so outputs agree to within one float32 ulp; the test derives its error
tolerance from that (rms_y is emitted for it). The clip errors are computed here in float64 from identical
float32 differences; the C++ uses float32 BLAS, whose dot products of length gs are within
gamma_gs * sum |x| |d| of exact. We emit, per (row, group), the mask of shrink levels that could win under
that bound (the exact best and every level whose interval overlaps it), and the exact best's max_val.

Run: /tmp/pyref/bin/python python/make_awq_golden.py   (writes tests/golden/quant_awq.json).
Float arrays are little-endian float32 hex strings.
"""
import json
import os

import numpy as np

F32 = np.float32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
U32 = 2.0**-24  # float32 unit roundoff
# Relative distance to a float32 rounding midpoint required of every double -> float32 rounding the C++ must
# reproduce. The two sides' doubles differ by at most: sequential sums of <= 256 nonnegative terms (C++) vs
# numpy's pairwise sums, gamma_256 ~ 2.9e-14 relative; libm pow, sqrt and divisions, a few double ulps (1e-15).
MIDPOINT_MARGIN = 1e-13


def hex_f32(a):
    return np.ascontiguousarray(a, dtype="<f4").tobytes().hex()


def midpoint_margin(d):
    """Relative distance of each float64 value d to the nearest float32 rounding midpoint."""
    d = np.asarray(d, dtype=np.float64)
    f = d.astype(F32)
    up = np.nextafter(f, F32(np.inf)).astype(np.float64)
    dn = np.nextafter(f, F32(-np.inf)).astype(np.float64)
    fv = f.astype(np.float64)
    dist = np.minimum(np.abs(d - (fv + up) / 2), np.abs(d - (fv + dn) / 2))
    return dist / np.abs(d)


def to_f32_checked(d, what):
    m = midpoint_margin(d).min()
    assert m > MIDPOINT_MARGIN, f"{what}: a value is within {m:.3g} of a float32 midpoint; change the seed"
    return np.asarray(d, dtype=np.float64).astype(F32)


# ---------------------------------------------------------------- the quantizer (kAwq grid)


def fake_quant(w, bits, sym):
    """w [rows, n] float32, one group per row -> dequantized float32, AutoAWQ pseudo_quantize_tensor with the
    scale rounded to fp16 first (a scale that underflows fp16 becomes 2^-24)."""
    assert w.dtype == F32
    maxq = F32(2**bits - 1)
    half = F32(2 ** (bits - 1))
    wmin, wmax = w.min(axis=1, keepdims=True), w.max(axis=1, keepdims=True)
    if sym:
        raw = np.maximum(np.maximum(-wmin, wmax), F32(1e-5)) / (half - F32(1))
    else:
        raw = np.maximum(wmax - wmin, F32(1e-5)) / maxq
    scale = raw.astype(np.float16).astype(F32)
    assert np.all(np.isfinite(scale))
    scale = np.where(scale == 0, F32(2.0**-24), scale).astype(F32)
    zero = np.full_like(scale, half) if sym else np.clip(-np.round(wmin / scale), F32(0), maxq)
    code = np.clip(np.round(w / scale) + zero, F32(0), maxq)
    out = (code - zero) * scale
    assert out.dtype == F32
    return out


def fake_quant_matrix(W, bits, gs, sym):
    rows, cols = W.shape
    g = cols if gs == 0 else gs
    return fake_quant(W.reshape(-1, g), bits, sym).reshape(rows, cols)


# ---------------------------------------------------------------- scale search


def search_scales(x_mean, weights, forward, bits, gs, sym, duo, n_grid=20):
    """x_mean [C] float32; weights: list of [out_i, C] float32; forward(list of weights) -> float32 output."""
    C = x_mean.shape[0]
    y0 = forward(weights).astype(np.float64)
    if duo:
        g = C if gs == 0 else gs
        Wc = np.concatenate(weights, axis=0)
        a = np.abs(Wc).astype(np.float64).reshape(-1, g)
        w_mean = (a / (a.max(axis=1, keepdims=True) + 1e-6)).reshape(Wc.shape).mean(axis=0)

    def err_for(s):
        wq = [fake_quant_matrix(W * s[None, :], bits, gs, sym) / s[None, :] for W in weights]
        y = forward(wq).astype(np.float64)
        return float(np.mean((y0 - y) ** 2))

    curve, all_s = [], []
    for i in range(n_grid):
        r = i / n_grid
        sd = np.power(x_mean.astype(np.float64), r)
        if duo:
            sd = sd / (np.power(w_mean, 1 - r) + 1e-4)
        sd = np.maximum(sd, 1e-4)
        sd = sd / np.sqrt(sd.max() * sd.min())
        s = to_f32_checked(sd, f"scales at alpha {r}")
        all_s.append(s)
        curve.append(err_for(s))
    best = int(np.argmin(curve))  # first minimum, as the strict '<' of the references
    others = [e for i, e in enumerate(curve) if i != best]
    assert min(others) > curve[best] * (1 + 1e-3), "best alpha not separated; change the data"
    err_rtn = err_for(np.ones(C, F32))
    rms_y = float(np.sqrt(np.mean(y0**2)))
    return best, all_s[best], curve, err_rtn, rms_y


# ---------------------------------------------------------------- clip search


def search_clip(W, X, bits, gs, sym, n_sample, n_grid=20, max_shrink=0.5):
    out, C = W.shape
    g = C if gs == 0 else gs
    ng = C // g
    T = X.shape[0]
    step = max(1, T // n_sample)
    Xs = X[::step]
    n_shrink = int(max_shrink * n_grid)
    Xs64 = Xs.astype(np.float64)
    best_mv = np.zeros((out, ng), F32)
    masks = np.zeros((out, ng), np.int64)
    gamma = g * U32 / (1 - g * U32)
    for j in range(ng):
        Wg = W[:, j * g:(j + 1) * g]
        Xg = Xs64[:, j * g:(j + 1) * g]
        amax = np.abs(Wg).max(axis=1)
        errs, bounds, mvs = [], [], []
        for i in range(n_shrink):
            m = (amax.astype(np.float64) * (1 - i / n_grid)).astype(F32)  # double product, one rounding
            mvs.append(m)
            wc = np.clip(Wg, -m[:, None], m[:, None])
            d = Wg - fake_quant(wc, bits, sym)  # float32, as the C++
            e = Xg @ d.astype(np.float64).T  # [Ts, out], exact up to float64 rounding
            a = np.abs(Xg) @ np.abs(d.astype(np.float64)).T  # sum |x| |d|
            de = gamma * a  # |float32 dot - exact| <= gamma_g * sum |x| |d|
            errs.append(np.mean(e**2, axis=0))
            # |e_f^2 - e^2| <= 2 |e| de + de^2, averaged; x2 for the float64 parts and the final roundings
            bounds.append(2 * np.mean(2 * np.abs(e) * de + de**2, axis=0) + 1e-300)
        errs = np.array(errs)  # [n_shrink, out]
        bounds = np.array(bounds)
        mvs = np.array(mvs)
        for r in range(out):
            b = int(np.argmin(errs[:, r]))
            best_mv[r, j] = mvs[b, r]
            lo, hi = errs[b, r] - bounds[b, r], errs[b, r] + bounds[b, r]
            mask = 0
            for i in range(n_shrink):
                if errs[i, r] - bounds[i, r] <= hi:  # could tie or beat the best under the bound
                    mask |= 1 << i
            assert mask & (1 << b)
            masks[r, j] = mask
    return best_mv, masks, Xs.shape[0]


# ---------------------------------------------------------------- the problem


def silu(g):
    return g / (1.0 + np.exp(-g))


def main():
    rng = np.random.default_rng(20240611)
    T, C, H, D = 256, 128, 64, 32
    # Activations: per-channel magnitudes around 1 with a few outlier channels 20-60x larger (the
    # structure AWQ exploits), and a nonzero mean on some channels.
    mag = rng.uniform(0.5, 1.5, C)
    outliers = np.array([3, 37, 64, 101, 118])
    mag[outliers] = rng.uniform(20, 60, outliers.size)
    X = (rng.standard_normal((T, C)) * mag + 0.3 * mag * (rng.random(C) < 0.2)).astype(F32)
    Wg = (rng.standard_normal((H, C)) * 0.05).astype(F32)
    Wu = (rng.standard_normal((H, C)) * 0.05).astype(F32)
    Wd = (rng.standard_normal((D, H)) * 0.05).astype(F32)

    X64 = X.astype(np.float64)
    x_mean = to_f32_checked(np.abs(X64).sum(axis=0) / T, "x_mean")

    def mlp(ws):
        g = X64 @ ws[0].astype(np.float64).T
        u = X64 @ ws[1].astype(np.float64).T
        return ((silu(g) * u) @ Wd.astype(np.float64).T).astype(F32)

    def concat(ws):
        return np.concatenate([X64 @ w.astype(np.float64).T for w in ws], axis=1).astype(F32)

    cases = []
    for block, fwd, bits, gs, sym, duo in [
        ("mlp", mlp, 4, 32, False, False),
        ("concat", concat, 3, 64, True, False),
        ("mlp", mlp, 4, 32, False, True),
        ("concat", concat, 4, 0, False, False),
    ]:
        best, s, curve, err_rtn, rms_y = search_scales(x_mean, [Wg, Wu], fwd, bits, gs, sym, duo)
        print(f"{block} bits {bits} gs {gs} sym {sym} duo {duo}: best alpha {best / 20} "
              f"err {curve[best]:.4g} vs rtn {err_rtn:.4g} (curve[0] {curve[0]:.4g})")
        cases.append({"block": block, "bits": bits, "group_size": gs, "sym": sym, "duo_scaling": duo,
                      "best_index": best, "scales": hex_f32(s), "err_curve": curve, "err_rtn": err_rtn,
                      "rms_y": rms_y})

    clips = []
    for bits, gs, sym, n_sample in [(4, 32, False, 100), (3, 0, True, 512)]:
        mv, masks, ts = search_clip(Wu, X, bits, gs, sym, n_sample)
        n_amb = int(np.sum([bin(int(m)).count("1") > 1 for m in masks.ravel()]))
        clipped = int(np.sum(mv < np.abs(Wu).reshape(H, mv.shape[1], -1).max(axis=2)))
        print(f"clip bits {bits} gs {gs} sym {sym}: {ts} tokens, {clipped}/{mv.size} groups clipped, "
              f"{n_amb} ambiguous under the float32 bound")
        clips.append({"bits": bits, "group_size": gs, "sym": sym, "sample_tokens": n_sample,
                      "n_tokens_used": ts, "max_val": hex_f32(mv), "masks": masks.ravel().tolist()})

    golden = {
        "generator": "python/make_awq_golden.py",
        "T": T, "C": C, "H": H, "D": D, "n_grid": 20,
        "x": hex_f32(X), "w_gate": hex_f32(Wg), "w_up": hex_f32(Wu), "w_down": hex_f32(Wd),
        "x_mean": hex_f32(x_mean),
        "scale_cases": cases,
        "clip_cases": clips,
    }
    path = os.path.join(ROOT, "tests", "golden", "quant_awq.json")
    with open(path, "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
