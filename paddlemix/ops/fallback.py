"""Pure-Paddle implementations of the fused ops. They define the semantics the C++/CUDA kernels must match."""

import paddle
import paddle.nn.functional as F


def rms_norm(x, weight, eps):
    """RMSNorm as Emu3/Llama: float32 statistics, cast back to x's dtype, then multiply by the weight."""
    xf = x.astype("float32")
    var = (xf * xf).mean(axis=-1, keepdim=True)
    y = (xf * paddle.rsqrt(var + eps)).astype(x.dtype)
    return weight * y


def rms_norm_grad(x, weight, dy, eps):
    """(dx, dweight) of ``rms_norm`` for the output gradient dy, in float32: with inv = rsqrt(mean(x^2) + eps) and
    n = x * inv, dx = inv * (dy * weight - n * mean(dy * weight * n)) and dweight = sum over rows of dy * n."""
    xf, gf = x.astype("float32"), dy.astype("float32")
    inv = paddle.rsqrt((xf * xf).mean(axis=-1, keepdim=True) + eps)
    n = xf * inv
    gw = gf * weight.astype("float32")
    dx = inv * (gw - n * (gw * n).mean(axis=-1, keepdim=True))
    dweight = (gf * n).reshape([-1, x.shape[-1]]).sum(axis=0)
    return dx.astype(x.dtype), dweight.astype(weight.dtype)


def softmax_xent_(logits, targets):
    """``ops.softmax_xent_`` in Paddle ops: the per-row cross-entropy [N] of float32 logits [N, V] against targets
    [N] (-100 = ignored: loss 0), with softmax - onehot (zero rows where ignored) left in ``logits``."""
    valid = targets != -100
    if bool(((targets < 0) & valid).any()) or bool((targets >= logits.shape[-1]).any()):
        raise ValueError(f"softmax_xent: targets must be -100 or in [0, {logits.shape[-1]})")
    index = paddle.where(valid, targets, paddle.zeros_like(targets)).astype("int64").unsqueeze(-1)
    picked = paddle.take_along_axis(logits, index, axis=-1).squeeze(-1)
    top = logits.max(axis=-1, keepdim=True)
    d = logits.subtract_(top).exp_()
    norm = d.sum(axis=-1, keepdim=True)
    loss = paddle.where(valid, norm.log().squeeze(-1) + top.squeeze(-1) - picked, paddle.zeros_like(picked))
    keep = valid.astype("float32").unsqueeze(-1)
    d.multiply_(keep / norm)
    d.put_along_axis_(index, paddle.take_along_axis(d, index, axis=-1) - keep, axis=-1)
    return loss


def rope_cos_sin(position_ids, inv_freq, dtype):
    """cos/sin tables [B, L, D] for rotate-half RoPE, computed in float32 and cast to dtype."""
    freqs = position_ids.astype("float32").unsqueeze(-1) * inv_freq.astype("float32")  # [B, L, D/2]
    emb = paddle.concat([freqs, freqs], axis=-1)
    return emb.cos().astype(dtype), emb.sin().astype(dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return paddle.concat([-x[..., half:], x[..., :half]], axis=-1)


def rotary_embedding(q, k, position_ids, inv_freq):
    """Rotate-half RoPE on q [B, L, Hq, D] and k [B, L, Hk, D] at position_ids [B, L].

    inv_freq [D/2] holds 1 / theta^(2i/D), already divided by the linear scaling factor or recomputed for dynamic
    NTK scaling, so one op serves every rope_scaling mode.
    """
    cos, sin = rope_cos_sin(position_ids, inv_freq, q.dtype)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def conv2d(x, weight, bias, stride, padding, upsample=1):
    """2-D convolution of x [N, C, H, W] (first upsampled by nearest neighbour by the integer factor `upsample`) with
    weight [Cout, C, kh, kw] (+ bias [Cout] unless None), no groups or dilation; stride (sh, sw) and zero padding
    (top, bottom, left, right), as ``F.conv2d``."""
    if upsample != 1:
        x = F.interpolate(x, scale_factor=float(upsample), mode="nearest")
    return F.conv2d(x, weight, bias, stride=list(stride), padding=list(padding))


def group_norm(x, weight, bias, groups, eps, scale=None, shift=None, silu=False):
    """GroupNorm of x [N, C, ...], then ``* scale + shift`` resized to x's spatial size by nearest neighbour (when
    given), then SiLU (when ``silu``)."""
    y = F.group_norm(x, groups, epsilon=eps, weight=weight, bias=bias)
    if scale is not None:
        size = x.shape[-2:]
        y = y * F.interpolate(scale, size=size, mode="nearest") + F.interpolate(shift, size=size, mode="nearest")
    return F.silu(y) if silu else y


def masked_softmax_(scores, mask, scale):
    """softmax(scores * scale + mask) over the last axis, in float32 (the scores are scaled and masked in place).

    scores [B, H, R, S]; mask: None, [B or 1, 1, L, S] (broadcast over the heads and over the R / L query groups of
    each head: rows are ordered group-major, query-minor) or [B, H, R, S].

    Half-precision scores are scaled in their own dtype (as the original divides them), then the mask is added to
    them in float32: in float16, ``finfo.min + score`` rounds to -inf for any score below -16, and a row whose every
    key is masked would give NaN, which the next layers spread. float32 scores take no extra step."""
    scores = scores.scale_(scale)
    if scores.dtype != paddle.float32:
        scores = scores.astype("float32")
    if mask is not None:
        if mask.dtype != paddle.float32:
            mask = mask.astype("float32")
        if mask.shape[1] != 1:
            scores.add_(mask)
        else:
            b, h, r, s = scores.shape
            length = mask.shape[2]
            scores.reshape([b, h * r // length, length, s]).add_(mask)
    return F.softmax_(scores, axis=-1)


# elements of a stored (bf16 or int8) weight widened to x's dtype at a time by ``linear``: 4M (16 MB of float32)
WIDEN_BLOCK = 1 << 22


def linear(x, weight, scale=None):
    """x [..., K] @ weight [K, N] (Paddle's [in, out] layout), no bias, as ``F.linear``.

    A weight stored in another dtype than x (bf16 on CPU) or in int8 with ``scale`` [N] (weight-only quantization:
    ``y = (x @ weight) * scale``, one scale per output column) is widened to x's dtype a block of about
    ``WIDEN_BLOCK`` elements of whole columns at a time, each block multiplied by Paddle's matmul (MKL's GEMM on CPU)
    into its columns of y: no widened copy of the whole weight ever exists."""
    if scale is None and weight.dtype == x.dtype:
        return paddle.matmul(x, weight)
    k, n = weight.shape
    step = max(1, WIDEN_BLOCK // k)
    blocks = []
    for c0 in range(0, n, step):
        y = paddle.matmul(x, weight[:, c0 : c0 + step].astype(x.dtype))
        blocks.append(y if scale is None else y * scale[c0 : c0 + step].astype(x.dtype))
    return blocks[0] if len(blocks) == 1 else paddle.concat(blocks, axis=-1)


def vq_nearest(latents, codebook):
    """Index of the nearest codebook row (squared L2, float32) for each row of latents [N, C]; ties -> lowest."""
    z = latents.astype("float32")
    e = codebook.astype("float32")
    d = (z * z).sum(axis=1, keepdim=True) + (e * e).sum(axis=1) - 2.0 * paddle.matmul(z, e, transpose_y=True)
    return paddle.argmin(d, axis=1).astype("int64")


def _log_softmax(x):
    """(x - max) - log(sum(exp(x - max))) over the last axis. F.log_softmax on CPU grows quadratically with the
    axis length (80 s for one row of Emu3's 184622 logits in Paddle 3.3.1); this takes about 10 ms."""
    shifted = x - x.max(axis=-1, keepdim=True)
    return shifted - shifted.exp().sum(axis=-1, keepdim=True).log()


def cfg_sample(cond_logits, uncond_logits, guidance_scale, allowed, top_k, top_p, temperature, random):
    """One generation step's scoring and token choice for a batch [B, V], in float32.

    1. scores = log_softmax(cond); with uncond_logits and guidance_scale != 1:
       scores = scale * (scores - log_softmax(uncond)) + log_softmax(uncond).
    2. allowed [B, 2] int64 (lo, hi): ids outside [lo, hi) get -inf (one forced id is hi = lo + 1). None: no mask.
    3. random None: greedy, the first index of the maximum. Otherwise sampling, as transformers' warpers in order:
       scores / temperature (if != 1); top-k (if 0 < top_k: drop scores below the k-th largest, ties kept);
       top-p (if < 1: sort ascending, ties in index order, drop tokens whose cumulative probability is <= 1 - top_p,
       always keeping the largest); then the token is the first index i whose running probability sum, in index
       order, exceeds random[b] * total (inverse CDF with the given uniforms in [0, 1)).
    Returns int64 [B].
    """
    scores = _log_softmax(cond_logits.astype("float32"))
    if uncond_logits is not None and guidance_scale is not None and guidance_scale != 1:
        u = _log_softmax(uncond_logits.astype("float32"))
        scores = guidance_scale * (scores - u) + u
    neg_inf = paddle.full_like(scores, float("-inf"))
    if allowed is not None:
        ids = paddle.arange(scores.shape[-1], dtype="int64").unsqueeze(0)
        keep = (ids >= allowed[:, 0:1]) & (ids < allowed[:, 1:2])
        scores = paddle.where(keep, scores, neg_inf)
    if random is None:
        return paddle.argmax(scores, axis=-1).astype("int64")
    if temperature is not None and temperature != 1.0:
        scores = scores / temperature
    vocab = scores.shape[-1]
    if top_k is not None and top_k > 0:
        # the k-th largest as the (V - k + 1)-th smallest: paddle.topk is very slow on CPU with many -inf scores
        kth = paddle.kthvalue(scores, vocab - min(int(top_k), vocab) + 1, axis=-1, keepdim=True)[0]
        scores = paddle.where(scores < kth, neg_inf, scores)
    if top_p is not None and top_p < 1.0:
        order = paddle.argsort(scores, axis=-1, stable=True)
        sorted_scores = paddle.take_along_axis(scores, order, axis=-1)
        cum = F.softmax(sorted_scores, axis=-1).cumsum(axis=-1)
        remove_sorted = (cum <= (1.0 - top_p)).astype("int32")
        remove_sorted[:, -1] = 0
        remove = paddle.put_along_axis(paddle.zeros_like(remove_sorted), order, remove_sorted, axis=-1)
        scores = paddle.where(remove.astype("bool"), neg_inf, scores)
    probs = F.softmax(scores, axis=-1)
    cdf = probs.cumsum(axis=-1)
    target = random.astype("float32").reshape([-1, 1]) * cdf[:, -1:]
    idx = (cdf <= target).astype("int64").sum(axis=-1)
    # never land on a zero-probability token at the end (target rounding): clamp to the last positive one
    last_pos = vocab - 1 - paddle.argmax(paddle.flip((probs > 0).astype("int64"), axis=[-1]), axis=-1)
    return paddle.minimum(idx, last_pos).astype("int64")
