"""Independent numpy references of the fused ops (numpy only: also used by benchmarks/cuda/check_kernels.py on a
machine without Paddle). Semantics: paddlemix/ops/fallback.py."""

import numpy as np

F32 = np.float32


def np_rms_norm(x, w, eps):
    x64 = x.astype(np.float64)
    return (w.astype(np.float64) * x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + eps)).astype(F32)


def np_rotary(x, pos, inv_freq):
    ang = pos.astype(np.float64)[..., None] * inv_freq.astype(np.float64)  # [B, L, D/2]
    cos, sin = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
    half = x.shape[-1] // 2
    a, b = x[..., :half].astype(np.float64), x[..., half:].astype(np.float64)
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1).astype(F32)


def np_conv2d(x, w, b, stride, pad):
    """x [N, C, H, W], w [Cout, C, kh, kw], b [Cout] or None, stride (sh, sw), zero pad (top, bottom, left, right);
    float64 sums of the shifted input slices, one kernel tap at a time."""
    (sh, sw), (pt, pb, pl, pr) = stride, pad
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    cout, _, kh, kw = w.shape
    ho, wo = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], cout, ho, wo))
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
            out += np.einsum("oc,nchw->nohw", w[:, :, i, j].astype(np.float64), tap)
    if b is not None:
        out += b.astype(np.float64)[None, :, None, None]
    return out.astype(F32)


def vq_inputs(rng, n, k, c, ties):
    """Random latents [n, c] and codebook [k, c]; with ties, duplicated codebook rows (the later copies must lose)
    and latents sitting exactly on a code."""
    e = rng.standard_normal((k, c)).astype(F32)
    z = rng.standard_normal((n, c)).astype(F32)
    if ties:
        dup = rng.choice(k // 2, size=k // 8, replace=False)
        e[k // 2 + np.arange(dup.size)] = e[dup]
        z[: n // 2] = e[rng.choice(dup, size=n // 2)]
    return z, e


def np_vq_nearest(z, e):
    d = ((z.astype(np.float64)[:, None, :] - e.astype(np.float64)[None]) ** 2).sum(-1)
    return d.argmin(1)  # argmin: first index of the minimum


def np_log_softmax(x):
    m = x.max()
    return ((x - m) - np.log(np.exp(x - m).sum(dtype=F32))).astype(F32)


def np_softmax(x):
    e = np.exp(x - x.max())
    return (e / e.sum(dtype=F32)).astype(F32)


def np_cfg_sample(cond, uncond, scale, allowed, top_k, top_p, temperature, random):
    """Step by step in float32, as transformers' processors and warpers (v4.44) do it, then the inverse CDF."""
    out = []
    for b in range(cond.shape[0]):
        s = np_log_softmax(cond[b].astype(F32))
        if uncond is not None and scale != 1:
            u = np_log_softmax(uncond[b].astype(F32))
            s = (F32(scale) * (s - u) + u).astype(F32)
        if allowed is not None:
            keep = np.zeros(s.shape, bool)
            keep[allowed[b][0] : allowed[b][1]] = True
            s = np.where(keep, s, F32(-np.inf))
        if random is None:
            out.append(int(np.argmax(s)))
            continue
        if temperature != 1:
            s = (s / F32(temperature)).astype(F32)
        if top_k:
            kth = np.sort(s)[::-1][min(top_k, s.size) - 1]
            s = np.where(s < kth, F32(-np.inf), s)
        if top_p < 1:
            order = np.argsort(s, kind="stable")
            cum = np.cumsum(np_softmax(s[order]), dtype=F32)
            drop = cum <= F32(1 - top_p)
            drop[-1] = False
            s = s.copy()
            s[order[drop]] = -np.inf
        p = np_softmax(s)
        cdf = np.cumsum(p, dtype=F32)
        idx = int((cdf <= F32(random[b]) * cdf[-1]).sum())
        out.append(min(idx, int(np.flatnonzero(p > 0)[-1])))
    return np.array(out, np.int64)


def np_decoder_step(x, weights, keys, values, slot, pos, inv_freq, mask, eps):
    """One decode step of a Llama decoder layer in float64: x [B, H]; weights as ops.decoder_step (projections
    [in, out]); keys, values [B, Hk, S, D] (copied, the new key/value written at slot); pos [B]; mask additive
    [B, 1 or Hk, 1 or g, S] over all S slots. Returns (y [B, H], keys, values)."""
    ln1, wq, wk, wv, wo, ln2, wg, wu, wd = (w.astype(np.float64) for w in weights)
    bsz, kv_heads, _, dim = keys.shape
    heads = wq.shape[1] // dim
    group = heads // kv_heads
    x64 = x.astype(np.float64)

    def norm(h, w):
        return w * h / np.sqrt((h * h).mean(-1, keepdims=True) + eps)

    xn = norm(x64, ln1)
    q = (xn @ wq).reshape(bsz, 1, heads, dim)
    k = (xn @ wk).reshape(bsz, 1, kv_heads, dim)
    v = (xn @ wv).reshape(bsz, kv_heads, dim)
    q = np_rotary(q, pos[:, None], inv_freq).astype(np.float64)[:, 0]
    k = np_rotary(k, pos[:, None], inv_freq).astype(np.float64)[:, 0]
    keys, values = keys.astype(np.float64), values.astype(np.float64)
    keys[:, :, slot], values[:, :, slot] = k, v
    full_mask = np.broadcast_to(mask.astype(np.float64), (bsz, kv_heads, group, keys.shape[2]))
    out = np.empty((bsz, heads, dim))
    for b in range(bsz):
        for h in range(heads):
            j = h // group
            s = keys[b, j] @ q[b, h] / np.sqrt(dim) + full_mask[b, j, h % group]
            p = np.exp(s - s.max())
            out[b, h] = (p / p.sum()) @ values[b, j]
    h1 = x64 + out.reshape(bsz, heads * dim) @ wo
    hn = norm(h1, ln2)
    gate = hn @ wg
    y = h1 + (gate / (1 + np.exp(-gate)) * (hn @ wu)) @ wd
    return y.astype(F32), keys.astype(F32), values.astype(F32)


def np_group_norm(x, weight, bias, groups, eps, scale=None, shift=None, silu=False):
    """GroupNorm of x [N, C, H, W] in float64; scale/shift [N, C, hs, ws] resized by F.interpolate's nearest rule
    (source index int(i * (in / out)) in float32); then SiLU."""
    n, c, h, w = x.shape
    xg = x.astype(np.float64).reshape(n, groups, -1)
    y = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + eps)
    y = y.reshape(n, c, h, w) * weight[:, None, None] + bias[:, None, None]
    if scale is not None:
        hs, ws = scale.shape[2:]
        sy = np.minimum((np.arange(h, dtype=F32) * F32(hs / h)).astype(np.int64), hs - 1)
        sx = np.minimum((np.arange(w, dtype=F32) * F32(ws / w)).astype(np.int64), ws - 1)
        y = y * scale[:, :, sy][:, :, :, sx] + shift[:, :, sy][:, :, :, sx]
    if silu:
        y = y / (1 + np.exp(-y))
    return y.astype(F32)


def np_masked_softmax(scores, mask, scale):
    """softmax(scores * scale + mask) over the last axis in float64; mask None, [B or 1, 1, L, S] broadcast over the
    heads and the query groups (rows group-major), or of the scores' shape."""
    b, h, r, s = scores.shape
    x = scores.astype(np.float64) * scale
    if mask is not None:
        if mask.shape[1] == 1:
            length = mask.shape[2]
            x = (x.reshape(b, h * r // length, length, s) + mask.astype(np.float64)).reshape(b, h, r, s)
        else:
            x = x + mask.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(F32)


def bf16_bits(w):
    """bf16 bit patterns (uint16) of a float32 array, truncated toward zero (any bf16 values serve as test weights)."""
    return (np.ascontiguousarray(w, dtype=F32).view(np.uint32) >> 16).astype(np.uint16)


def np_widen(w):
    """A stored weight as float64: bf16 bits (uint16) are the high half of a float32; int8 and float32 as they are."""
    if w.dtype == np.uint16:
        return (w.astype(np.uint32) << 16).view(F32).astype(np.float64)
    return w.astype(np.float64)


def np_linear_stored(x, w, scale=None):
    """x [..., K] @ w [K, N] in float64 with w float32, bf16 bits (uint16) or int8; an int8 product times scale [N]."""
    y = x.astype(np.float64) @ np_widen(w)
    return (y if scale is None else y * scale.astype(np.float64)).astype(F32)
