"""The fused ops: the pure-Paddle fallback and the compiled extension against independent numpy references.

The numpy references always run. The extension tests need `paddlemix_ops` (external_ops/setup.py): they skip when
it is not built on a developer machine, but fail under CI=true (CI builds it) unless PADDLEMIX_DISABLE_EXT_OPS is
set. Each extension test replaces the fallback with a function that raises, so it proves the kernel ran.
"""

import os

import numpy as np
import paddle
import pytest

import paddlemix.ops as ops
from op_reference import (
    F32, np_cfg_sample, np_conv2d, np_decoder_step, np_group_norm, np_masked_softmax, np_rms_norm, np_rotary,
    np_vq_nearest, vq_inputs,
)
from paddlemix.ops import fallback

OPS = ("rms_norm", "rotary_embedding", "vq_nearest", "cfg_sample", "conv2d", "linear", "group_norm", "masked_softmax_")
ORIGINAL_FALLBACK = {name: getattr(fallback, name) for name in OPS}


# ----------------------------------------------------------------------------------------------- helpers
def require_extension():
    """Skip (or fail under CI) when the compiled extension is not active."""
    if ops.extension() is not None:
        return
    disabled = os.environ.get("PADDLEMIX_DISABLE_EXT_OPS", "0") not in ("", "0")
    if os.environ.get("CI", "").lower() == "true" and not disabled:
        pytest.fail("paddlemix_ops is not importable under CI: build it with "
                    "`python -m pip install --no-build-isolation ./external_ops`")
    pytest.skip("paddlemix_ops extension not built or disabled")


@pytest.fixture
def ext_only(monkeypatch):
    """The extension must run: the fallback raises if it is reached, and the CPU kernels are all enabled."""
    require_extension()

    def refuse(*args, **kwargs):
        raise AssertionError("the fallback ran instead of the extension")

    for name in OPS:
        monkeypatch.setattr(fallback, name, refuse)
    monkeypatch.setattr(ops, "CPU_EXT_OPS", frozenset(OPS) | {"decoder_step", "masked_softmax"})


def t(a):
    return paddle.to_tensor(a)


# ----------------------------------------------------------------------------------------------- rms_norm
RMS_CASES = [((2, 3, 257), 1e-6, 0), ((1, 4096), 1e-5, 1), ((5, 64), 1e-6, 2)]


def _rms_inputs(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 3).astype(F32), rng.standard_normal(shape[-1]).astype(F32)


@pytest.mark.parametrize("shape,eps,seed", RMS_CASES)
def test_rms_norm_fallback_matches_numpy(shape, eps, seed):
    x, w = _rms_inputs(shape, seed)
    got = fallback.rms_norm(t(x), t(w), eps).numpy()
    np.testing.assert_allclose(got, np_rms_norm(x, w, eps), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("shape,eps,seed", RMS_CASES)
def test_rms_norm_extension(shape, eps, seed, ext_only):
    x, w = _rms_inputs(shape, seed)
    with paddle.no_grad():
        got = ops.rms_norm(t(x), t(w), eps).numpy()
    np.testing.assert_allclose(got, np_rms_norm(x, w, eps), rtol=2e-5, atol=2e-6)


# ----------------------------------------------------------------------------------------------- rotary_embedding
ROPE_CASES = [(2, 5, 8, 2, 64, 0), (1, 3, 4, 4, 128, 1), (3, 1, 6, 3, 32, 2)]  # B, L, Hq, Hk, D, seed


def _rope_inputs(b, l, hq, hk, d, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, l, hq, d)).astype(F32)
    k = rng.standard_normal((b, l, hk, d)).astype(F32)
    pos = rng.integers(0, 5000, (b, l)).astype(np.int64)
    inv_freq = (1.0 / 10000 ** (np.arange(0, d, 2) / d)).astype(F32)
    return q, k, pos, inv_freq


@pytest.mark.parametrize("b,l,hq,hk,d,seed", ROPE_CASES)
def test_rotary_fallback_matches_numpy(b, l, hq, hk, d, seed):
    q, k, pos, f = _rope_inputs(b, l, hq, hk, d, seed)
    qo, ko = fallback.rotary_embedding(t(q), t(k), t(pos), t(f))
    # float32 angles up to 5000 rad: about 5000 * 2^-24 of phase error
    np.testing.assert_allclose(qo.numpy(), np_rotary(q, pos, f), atol=2e-3)
    np.testing.assert_allclose(ko.numpy(), np_rotary(k, pos, f), atol=2e-3)


@pytest.mark.parametrize("b,l,hq,hk,d,seed", ROPE_CASES)
def test_rotary_extension(b, l, hq, hk, d, seed, ext_only):
    q, k, pos, f = _rope_inputs(b, l, hq, hk, d, seed)
    with paddle.no_grad():
        qo, ko = ops.rotary_embedding(t(q), t(k), t(pos), t(f))
    np.testing.assert_allclose(qo.numpy(), np_rotary(q, pos, f), atol=2e-3)
    np.testing.assert_allclose(ko.numpy(), np_rotary(k, pos, f), atol=2e-3)
    fq, fk = _fallback_of("rotary_embedding")(t(q), t(k), t(pos), t(f))
    np.testing.assert_allclose(qo.numpy(), fq.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ko.numpy(), fk.numpy(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- vq_nearest
VQ_CASES = [(300, 1000, 4, 0, False), (257, 515, 4, 1, True), (64, 300, 8, 2, True), (1, 33, 3, 3, False)]


@pytest.mark.parametrize("n,k,c,seed,ties", VQ_CASES)
def test_vq_nearest_fallback_matches_numpy(n, k, c, seed, ties):
    z, e = vq_inputs(np.random.default_rng(seed), n, k, c, ties)
    np.testing.assert_array_equal(fallback.vq_nearest(t(z), t(e)).numpy(), np_vq_nearest(z, e))


@pytest.mark.parametrize("n,k,c,seed,ties", VQ_CASES)
def test_vq_nearest_extension(n, k, c, seed, ties, ext_only):
    z, e = vq_inputs(np.random.default_rng(seed), n, k, c, ties)
    got = ops.vq_nearest(t(z), t(e))
    assert got.dtype == paddle.int64
    np.testing.assert_array_equal(got.numpy(), np_vq_nearest(z, e))


# ----------------------------------------------------------------------------------------------- cfg_sample
# (batch, vocab, allowed ranges or None, guidance scale or None (no uncond), top_k, top_p, temperature, sampling,
#  logit rounding (creates exact ties), seed)
CFG_CASES = {
    "greedy-guided": (2, 1037, [(100, 900), (0, 1037)], 3.0, 0, 1.0, 1.0, False, None, 0),
    "greedy-ties": (1, 777, [(10, 500)], None, 0, 1.0, 1.0, False, 0, 1),
    "topk-range": (3, 2053, [(1000, 2053), (0, 1500), (300, 301 + 400)], 5.0, 64, 1.0, 1.0, True, None, 2),
    "topk-1": (2, 999, [(5, 900), (0, 999)], 2.0, 1, 1.0, 1.0, True, None, 3),
    "topk-larger-than-range": (2, 1111, [(500, 530), (7, 8 + 5)], 3.0, 100, 1.0, 1.0, True, None, 4),
    "single-token": (2, 800, [(123, 124), (799, 800)], 3.0, 50, 0.9, 0.7, True, None, 5),
    "no-mask-no-uncond": (1, 3001, None, None, 0, 1.0, 1.0, True, None, 6),
    "top-p": (2, 4099, [(2000, 4099), (0, 4099)], 4.0, 0, 0.8, 1.0, True, None, 7),
    "top-k-top-p-temperature": (4, 5003, [(1003, 4003)] * 4, 3.0, 256, 0.9, 0.7, True, None, 8),
    "temperature-hot": (2, 1500, [(0, 1200), (300, 1500)], 1.5, 0, 1.0, 1.8, True, None, 9),
    "ties-topk-topp": (2, 1200, [(100, 1100), (0, 1200)], 2.0, 40, 0.7, 1.0, True, 0, 10),
    "batch1-large-vocab": (1, 184622, [(151854, 151854 + 32768)], 3.0, 2048, 1.0, 1.0, True, None, 11),
}


def _cfg_inputs(case):
    b, v, allowed, scale, top_k, top_p, temp, sampling, decimals, seed = case
    rng = np.random.default_rng(seed)
    cond = (rng.standard_normal((b, v)) * 3).astype(F32)
    uncond = (rng.standard_normal((b, v)) * 3).astype(F32) if scale is not None else None
    if decimals is not None:  # coarse logits: many exactly equal scores
        cond = np.round(cond, decimals)
        uncond = np.round(uncond, decimals) if uncond is not None else None
    random = rng.random(b).astype(F32) if sampling else None
    allowed = np.array(allowed, np.int64) if allowed is not None else None
    return cond, uncond, scale, allowed, top_k, top_p, temp, random


def _as_tensors(cond, uncond, scale, allowed, top_k, top_p, temp, random):
    return (
        t(cond),
        t(uncond) if uncond is not None else None,
        scale,
        t(allowed) if allowed is not None else None,
        top_k,
        top_p,
        temp,
        t(random) if random is not None else None,
    )


@pytest.mark.parametrize("name", sorted(CFG_CASES))
def test_cfg_sample_fallback_matches_numpy(name):
    args = _cfg_inputs(CFG_CASES[name])
    got = fallback.cfg_sample(*_as_tensors(*args)).numpy()
    np.testing.assert_array_equal(got, np_cfg_sample(*args))
    allowed = args[3]
    if allowed is not None:
        assert np.all((got >= allowed[:, 0]) & (got < allowed[:, 1]))


@pytest.mark.parametrize("name", sorted(CFG_CASES))
def test_cfg_sample_extension(name, ext_only):
    args = _cfg_inputs(CFG_CASES[name])
    got = ops.cfg_sample(*_as_tensors(*args))
    assert got.dtype == paddle.int64
    np.testing.assert_array_equal(got.numpy(), np_cfg_sample(*args))


def test_cfg_sample_extension_many_uniforms(ext_only):
    """Sweep the uniforms over [0, 1): every draw equals the fallback's and the numpy reference's."""
    cond, uncond, scale, allowed, top_k, top_p, temp, _ = _cfg_inputs(CFG_CASES["top-k-top-p-temperature"])
    rng = np.random.default_rng(12)
    reference = _fallback_of("cfg_sample")
    for _ in range(10):
        random = rng.random(cond.shape[0]).astype(F32)
        args = (cond, uncond, scale, allowed, top_k, top_p, temp, random)
        got = ops.cfg_sample(*_as_tensors(*args)).numpy()
        np.testing.assert_array_equal(got, reference(*_as_tensors(*args)).numpy())
        np.testing.assert_array_equal(got, np_cfg_sample(*args))


def test_cfg_sample_extension_rejects_empty_range(ext_only):
    cond, uncond, scale, _, top_k, top_p, temp, random = _cfg_inputs(CFG_CASES["topk-1"])
    allowed = np.array([[5, 5], [0, 10]], np.int64)
    with pytest.raises(Exception, match="allowed range"):
        ops.cfg_sample(*_as_tensors(cond, uncond, scale, allowed, top_k, top_p, temp, random))


# ----------------------------------------------------------------------------------------------- conv2d
# (N, C, Cout, H, W, kh, kw, stride, padding as passed, seed): 3x3 "same", the VQ downsample (pad right/bottom,
# stride 2), 1x1 with and without stride/padding, channel counts not multiples of 8, batch > 1, rectangular images
# and kernels, and an image wide enough that the kernel works in several bands of rows
CONV_CASES = [
    (1, 3, 8, 17, 23, 3, 3, 1, 1, 0),
    (2, 13, 7, 16, 16, 3, 3, 2, (0, 1, 0, 1), 1),
    (3, 10, 5, 9, 12, 1, 1, 1, 0, 2),
    (2, 6, 11, 10, 7, 1, 1, (2, 1), (1, 0, 2, 1), 3),
    (1, 5, 9, 12, 15, 3, 2, (1, 2), (2, 0, 1, 3), 4),
    (1, 19, 21, 9, 9, 5, 5, 1, 2, 5),
    (2, 24, 17, 150, 130, 3, 3, 1, (1, 1), 6),
    (1, 4, 6, 5, 5, 5, 5, 1, 0, 7),
]


def _conv_inputs(n, c, cout, h, w, kh, kw, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(F32)
    weight = (rng.standard_normal((cout, c, kh, kw)) / np.sqrt(c * kh * kw)).astype(F32)
    return x, weight, rng.standard_normal(cout).astype(F32)


def _conv_args(stride, padding):
    """stride (sh, sw) and padding (top, bottom, left, right) as the numpy reference takes them."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    if isinstance(padding, int):
        padding = (padding,) * 4
    elif len(padding) == 2:
        padding = (padding[0], padding[0], padding[1], padding[1])
    return (sh, sw), tuple(padding)


@pytest.mark.parametrize("n,c,cout,h,w,kh,kw,stride,padding,seed", CONV_CASES)
def test_conv2d_fallback_matches_numpy(n, c, cout, h, w, kh, kw, stride, padding, seed, monkeypatch):
    x, weight, bias = _conv_inputs(n, c, cout, h, w, kh, kw, seed)
    expected = np_conv2d(x, weight, bias, *_conv_args(stride, padding))
    got = fallback.conv2d(t(x), t(weight), t(bias), *_conv_args(stride, padding)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the entry point's argument forms (int, pair, 4-tuple) on the fallback path
    monkeypatch.setattr(ops, "CPU_EXT_OPS", ops.CPU_EXT_OPS - {"conv2d"})
    np.testing.assert_allclose(ops.conv2d(t(x), t(weight), t(bias), stride, padding).numpy(), expected,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,c,cout,h,w,kh,kw,stride,padding,seed", CONV_CASES)
def test_conv2d_extension(n, c, cout, h, w, kh, kw, stride, padding, seed, ext_only):
    x, weight, bias = _conv_inputs(n, c, cout, h, w, kh, kw, seed)
    args = _conv_args(stride, padding)
    with paddle.no_grad():
        got = ops.conv2d(t(x), t(weight), t(bias), stride, padding).numpy()
        no_bias = ops.conv2d(t(x), t(weight), None, stride, padding).numpy()
    expected = np_conv2d(x, weight, bias, *args)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(no_bias, np_conv2d(x, weight, None, *args), rtol=1e-4, atol=1e-4)
    # same GEMM summation order as Paddle's own convolution: equal up to a few float32 ulps
    reference = _fallback_of("conv2d")(t(x), t(weight), t(bias), *args).numpy()
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)


# (N, C, Cout, H, W, kh, kw, stride, padding, upsample, seed): the VQ decoder's upsampling conv (2x, 3x3 "same"),
# an odd-sized input, a factor of 3 with stride and uneven padding, and a 1x1 kernel (no direct GEMM when upsampling)
UPSAMPLE_CASES = [
    (1, 5, 7, 8, 9, 3, 3, 1, 1, 2, 0),
    (2, 3, 4, 7, 5, 3, 2, (2, 1), (0, 2, 1, 1), 3, 1),
    (1, 6, 3, 4, 6, 1, 1, 1, 0, 2, 2),
]


def _np_upsample(x, factor):
    return np.repeat(np.repeat(x, factor, axis=2), factor, axis=3)


@pytest.mark.parametrize("n,c,cout,h,w,kh,kw,stride,padding,up,seed", UPSAMPLE_CASES)
def test_conv2d_upsample_fallback_matches_numpy(n, c, cout, h, w, kh, kw, stride, padding, up, seed):
    x, weight, bias = _conv_inputs(n, c, cout, h, w, kh, kw, seed)
    args = _conv_args(stride, padding)
    expected = np_conv2d(_np_upsample(x, up), weight, bias, *args)
    got = fallback.conv2d(t(x), t(weight), t(bias), *args, up).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,c,cout,h,w,kh,kw,stride,padding,up,seed", UPSAMPLE_CASES)
def test_conv2d_upsample_extension(n, c, cout, h, w, kh, kw, stride, padding, up, seed, ext_only):
    x, weight, bias = _conv_inputs(n, c, cout, h, w, kh, kw, seed)
    args = _conv_args(stride, padding)
    with paddle.no_grad():
        got = ops.conv2d(t(x), t(weight), t(bias), stride, padding, upsample=up).numpy()
    expected = np_conv2d(_np_upsample(x, up), weight, bias, *args)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, _fallback_of("conv2d")(t(x), t(weight), t(bias), *args, up).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_conv2d_non_contiguous_input(ext_only):
    x, weight, bias = _conv_inputs(2, 6, 4, 9, 11, 3, 3, 8)
    xt = t(x.transpose(0, 1, 3, 2).copy()).transpose([0, 1, 3, 2])  # a transposed view when Paddle makes one
    with paddle.no_grad():
        got = ops.conv2d(xt, t(weight), t(bias), 1, 1).numpy()
    np.testing.assert_allclose(got, np_conv2d(x, weight, bias, (1, 1), (1, 1, 1, 1)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride,padding,up", [(0, 1, 1), (1, -1, 1), (1, (1, 2, 3), 1), ((1, 2, 3), 0, 1),
                                               (1, 1, 0), (1, 1, 1.5)])
def test_conv2d_rejects_bad_arguments(stride, padding, up):
    x, weight, bias = _conv_inputs(1, 2, 3, 5, 5, 3, 3, 9)
    with pytest.raises(ValueError, match="conv2d"):
        ops.conv2d(t(x), t(weight), t(bias), stride, padding, upsample=up)


# ----------------------------------------------------------------------------------------------- group_norm
# (N, C, H, W, groups, modulation size or None, silu, offset, seed): the encoder's GroupNorm + SiLU, the decoder's
# SpatialNorm at the latent's size and upsampled 2x / 4x, a resize that is not an integer factor, one channel per
# group, inputs far from zero mean (the variance must not cancel), and a map large enough for the threads
GN_CASES = [
    (1, 64, 9, 7, 32, None, True, 0.0, 0),
    (2, 32, 8, 8, 32, (8, 8), True, 0.0, 1),
    (1, 64, 16, 12, 32, (4, 3), False, 0.0, 2),
    (2, 12, 10, 7, 4, (3, 5), True, 0.0, 3),
    (1, 8, 5, 6, 8, None, False, 50.0, 4),
    (1, 64, 96, 80, 32, (24, 20), True, 3.0, 5),
]


def _gn_inputs(n, c, h, w, groups, mod, silu, offset, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, h, w)) + offset).astype(F32)
    weight, bias = (1 + 0.2 * rng.standard_normal(c)).astype(F32), (0.2 * rng.standard_normal(c)).astype(F32)
    scale = shift = None
    if mod is not None:
        scale = rng.standard_normal((n, c, *mod)).astype(F32)
        shift = rng.standard_normal((n, c, *mod)).astype(F32)
    return x, weight, bias, scale, shift


def _opt(a):
    return None if a is None else t(a)


@pytest.mark.parametrize("case", GN_CASES)
def test_group_norm_fallback_matches_numpy(case):
    x, weight, bias, scale, shift = _gn_inputs(*case)
    groups, silu = case[4], case[6]
    got = fallback.group_norm(t(x), t(weight), t(bias), groups, 1e-6, _opt(scale), _opt(shift), silu).numpy()
    # Paddle's CPU group_norm takes the variance as E[x^2] - E[x]^2 in float32: it loses about
    # eps_f32 * mean^2 / var far from zero mean (the extension's two-pass statistics do not)
    tol = 1e-4 + 2e-7 * case[7] ** 2
    np.testing.assert_allclose(got, np_group_norm(x, weight, bias, groups, 1e-6, scale, shift, silu),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("case", GN_CASES)
def test_group_norm_extension(case, ext_only):
    x, weight, bias, scale, shift = _gn_inputs(*case)
    groups, silu = case[4], case[6]
    with paddle.no_grad():
        got = ops.group_norm(t(x), t(weight), t(bias), groups, 1e-6, _opt(scale), _opt(shift), silu).numpy()
    np.testing.assert_allclose(got, np_group_norm(x, weight, bias, groups, 1e-6, scale, shift, silu),
                               rtol=1e-5, atol=2e-5)


def test_group_norm_rejects_bad_arguments(ext_only):
    x, weight, bias, scale, shift = _gn_inputs(*GN_CASES[1])
    with paddle.no_grad():
        with pytest.raises(ValueError, match="together"):
            ops.group_norm(t(x), t(weight), t(bias), 32, 1e-6, t(scale), None)
        with pytest.raises(Exception, match="split into the groups"):
            ops.group_norm(t(x), t(weight), t(bias), 5, 1e-6)
        with pytest.raises(Exception, match="scale and shift must be"):
            ops.group_norm(t(x), t(weight), t(bias), 32, 1e-6, t(scale[:, :4]), t(shift[:, :4]))


# ----------------------------------------------------------------------------------------------- masked_softmax
# (scores shape [B, H, R, S], mask kind, seed): a prefill block (mask [B, 1, L, S] over 4 query groups per head, with
# padded rows and a causal pattern), one mask for every row of a batch, no mask, a decode-shaped exact mask, a row
# fully masked (uniform, as the original's eager attention) and a long row
SOFTMAX_CASES = [
    ((2, 2, 8, 11), "broadcast", 0),
    ((3, 2, 6, 5), "one mask", 1),
    ((1, 4, 3, 9), None, 2),
    ((2, 2, 4, 7), "exact", 3),
    ((1, 2, 4, 6), "all masked row", 4),
    ((1, 8, 64, 1024), "broadcast", 5),
]


def _softmax_inputs(shape, kind, seed):
    rng = np.random.default_rng(seed)
    b, h, r, s = shape
    scores = (3 * rng.standard_normal(shape)).astype(F32)
    low = np.finfo(F32).min
    mask = None
    if kind in ("broadcast", "one mask", "all masked row"):
        length = r // 4 if kind != "one mask" else r // 2
        visible = np.arange(s)[None, None] <= np.arange(length)[None, :, None] + s - length  # causal over the slots
        visible = visible & (np.arange(s)[None, None] >= np.arange(b if kind != "one mask" else 1)[:, None, None])
        if kind == "all masked row":
            visible[0, 0] = False
        mask = np.where(visible, 0.0, low).astype(F32)[:, None]
    elif kind == "exact":
        mask = np.where(rng.random(shape) < 0.3, low, 0.0).astype(F32)
        mask[..., 0] = 0.0
    return scores, mask


@pytest.mark.parametrize("shape,kind,seed", SOFTMAX_CASES)
def test_masked_softmax_fallback_matches_numpy(shape, kind, seed):
    scores, mask = _softmax_inputs(shape, kind, seed)
    got = fallback.masked_softmax_(t(scores), _opt(mask), 0.125).numpy()
    np.testing.assert_allclose(got, np_masked_softmax(scores, mask, 0.125), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,kind,seed", SOFTMAX_CASES)
def test_masked_softmax_extension(shape, kind, seed, ext_only):
    scores, mask = _softmax_inputs(shape, kind, seed)
    x = t(scores)
    with paddle.no_grad():
        got = ops.masked_softmax_(x, _opt(mask), 0.125)
    np.testing.assert_allclose(got.numpy(), np_masked_softmax(scores, mask, 0.125), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x.numpy(), got.numpy())  # in place


def test_masked_softmax_rejects_a_mask_that_does_not_fit(ext_only):
    scores, mask = _softmax_inputs((2, 2, 8, 11), "broadcast", 0)
    with paddle.no_grad(), pytest.raises(Exception, match="mask must be"):
        ops.masked_softmax_(t(scores), t(mask[..., :-1]), 0.125)
    with paddle.no_grad(), pytest.raises(Exception, match="mask must be"):
        ops.masked_softmax_(t(scores), t(np.zeros((2, 1, 3, 11), F32)), 0.125)  # 3 does not divide 8 rows


# ----------------------------------------------------------------------------------------------- linear
# (leading shape, K, N): one to LINEAR_MAX_ROWS rows, K odd, not a multiple of 4 or 0, N below / not a multiple of the
# 8-wide vectors, 2-D and 3-D inputs, and weights large enough for the threaded path
LINEAR_CASES = [
    ((1,), 512, 128),
    ((2,), 513, 1003),
    ((3,), 7, 5),
    ((1, 1), 1376, 520),
    ((2, 1), 300, 257),
    ((1, 5), 129, 9),
    ((4, 4), 64, 2048),
    ((16,), 515, 1001),
    ((2,), 0, 9),
]


def _linear_inputs(lead, k, n, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((*lead, k)).astype(F32), rng.standard_normal((k, n)).astype(F32)


def _np_linear(x, w):
    return (x.astype(np.float64) @ w.astype(np.float64)).astype(F32)


def _linear_tol(k):
    return 2e-5 * np.sqrt(k)  # float32 sums of K products of unit normals, any order


@pytest.mark.parametrize("lead,k,n", LINEAR_CASES)
def test_linear_fallback_matches_numpy(lead, k, n):
    x, w = _linear_inputs(lead, k, n, 0)
    got = fallback.linear(t(x), t(w)).numpy()
    assert got.shape == (*lead, n)
    np.testing.assert_allclose(got, _np_linear(x, w), rtol=1e-5, atol=_linear_tol(k))


@pytest.mark.parametrize("lead,k,n", LINEAR_CASES)
def test_linear_extension(lead, k, n, ext_only, monkeypatch):
    monkeypatch.setattr(ops, "LINEAR_MIN_WEIGHTS", 0)
    x, w = _linear_inputs(lead, k, n, 1)
    with paddle.no_grad():
        got = ops.linear(t(x), t(w)).numpy()
    assert got.shape == (*lead, n)
    np.testing.assert_allclose(got, _np_linear(x, w), rtol=1e-5, atol=_linear_tol(k))
    reference = _fallback_of("linear")(t(x), t(w)).numpy()
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=_linear_tol(k))


def test_linear_non_contiguous_input(ext_only, monkeypatch):
    monkeypatch.setattr(ops, "LINEAR_MIN_WEIGHTS", 0)
    x, w = _linear_inputs((65, 2), 33, 40, 2)
    xt = t(x).transpose([1, 0, 2])[:, 1:3]  # [65, 2, 33] -> a strided [2, 2, 33] view: 4 rows
    with paddle.no_grad():
        got = ops.linear(xt, t(w)).numpy()
    np.testing.assert_allclose(got, _np_linear(x.transpose(1, 0, 2)[:, 1:3], w), rtol=1e-5, atol=_linear_tol(33))


@pytest.mark.parametrize("rows_over,weights_under", [(1, 0), (0, 1)])
def test_linear_many_rows_or_small_weight_take_matmul(rows_over, weights_under, monkeypatch):
    """More than LINEAR_MAX_ROWS rows, or a weight under LINEAR_MIN_WEIGHTS, go to the fallback (Paddle's matmul)
    even when the kernel is enabled."""
    calls = []
    monkeypatch.setattr(fallback, "linear",
                        lambda x, w, *s: calls.append(x.shape) or ORIGINAL_FALLBACK["linear"](x, w, *s))
    monkeypatch.setattr(ops, "CPU_EXT_OPS", frozenset(OPS))
    monkeypatch.setattr(ops, "LINEAR_MIN_WEIGHTS", 24 * 10 + weights_under)
    x, w = _linear_inputs((ops.LINEAR_MAX_ROWS + rows_over,), 24, 10, 3)
    with paddle.no_grad():
        got = ops.linear(t(x), t(w)).numpy()
    assert calls == [list(x.shape)]
    np.testing.assert_allclose(got, _np_linear(x, w), rtol=1e-5, atol=_linear_tol(24))


@pytest.mark.parametrize("x_shape,w_shape", [((2, 8), (9, 4)), ((8,), (8,)), ((2, 8), (8, 4, 1))])
def test_linear_rejects_mismatched_shapes(x_shape, w_shape):
    with pytest.raises(ValueError, match="linear"):
        ops.linear(paddle.zeros(x_shape), paddle.zeros(w_shape))


# ----------------------------------------------------------------------------------------------- decoder_step
# (B, hidden, heads, kv_heads, head_dim, intermediate, capacity, slot, mask kind, seed): head sizes that take the
# vector paths (multiples of 8 and 16) and ones that do not, one and several KV heads per group, a first slot, a slot
# inside a longer cache (the slots after it unfilled) and the last slot, weights above the size where the threads
# split the rows, and every mask layout ([B, 1, 1, S], [B, Hk, g, S], with padded slots hidden)
STEP_CASES = [
    (1, 64, 4, 2, 16, 96, 40, 0, "broadcast", 0),
    (2, 64, 8, 2, 8, 160, 37, 20, "full", 1),
    (3, 36, 6, 3, 6, 50, 11, 10, "padded", 2),
    (2, 256, 8, 8, 32, 704, 300, 257, "padded", 3),
    (1, 40, 4, 4, 10, 72, 9, 5, "full", 4),
]


def _step_inputs(b, hidden, heads, kv_heads, dim, inter, cap, slot, mask_kind, seed):
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(F32)

    weights = [
        (1 + 0.1 * rng.standard_normal(hidden)).astype(F32), w(hidden, heads * dim), w(hidden, kv_heads * dim),
        w(hidden, kv_heads * dim), w(heads * dim, hidden), (1 + 0.1 * rng.standard_normal(hidden)).astype(F32),
        w(hidden, inter), w(hidden, inter), w(inter, hidden),
    ]
    x = rng.standard_normal((b, hidden)).astype(F32)
    keys = rng.standard_normal((b, kv_heads, cap, dim)).astype(F32)
    values = rng.standard_normal((b, kv_heads, cap, dim)).astype(F32)
    pos = rng.integers(0, 4 * cap, b).astype(np.int64)
    inv_freq = (1.0 / 10000 ** (np.arange(0, dim, 2) / dim)).astype(F32)
    low = np.finfo(F32).min
    visible = np.arange(cap)[None] <= slot  # slots after the new token's are unfilled
    if mask_kind == "padded":  # row r has its first r slots padded
        visible = visible & (np.arange(cap)[None] >= np.arange(b)[:, None])
        visible[:, slot] = True
    mask = np.where(np.broadcast_to(visible, (b, cap)), 0.0, low).astype(F32)[:, None, None]
    if mask_kind == "full":
        mask = np.ascontiguousarray(np.broadcast_to(mask, (b, kv_heads, heads // kv_heads, cap)))
    return x, weights, keys, values, slot, pos, inv_freq, mask


@pytest.mark.parametrize("case", STEP_CASES)
def test_decoder_step_extension(case, ext_only):
    x, weights, keys, values, slot, pos, inv_freq, mask = _step_inputs(*case)
    want_y, want_keys, want_values = np_decoder_step(x, weights, keys, values, slot, pos, inv_freq, mask, 1e-6)
    keys_t, values_t = t(keys), t(values)
    with paddle.no_grad():
        assert ops.decoder_step_available(t(x))
        y = ops.decoder_step(t(x[:, None]), [t(w) for w in weights], [keys_t], [values_t], slot, t(pos[:, None]),
                             t(inv_freq), t(mask), 1e-6)
    assert y.shape == [x.shape[0], 1, x.shape[1]]
    np.testing.assert_allclose(y.numpy()[:, 0], want_y, rtol=1e-4, atol=1e-4)
    # the cache holds the new key/value at slot (in place, in the tensors passed) and nothing else changed
    np.testing.assert_allclose(keys_t.numpy()[:, :, slot], want_keys[:, :, slot], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(values_t.numpy()[:, :, slot], want_values[:, :, slot], rtol=1e-4, atol=1e-4)
    untouched = np.arange(keys.shape[2]) != slot
    np.testing.assert_array_equal(keys_t.numpy()[:, :, untouched], keys[:, :, untouched])
    np.testing.assert_array_equal(values_t.numpy()[:, :, untouched], values[:, :, untouched])


def test_decoder_step_in_the_model_equals_the_unfused_layers(fixtures_dir, monkeypatch):
    """Cached one-token forwards of the fixture LM (padded rows) run every layer in one fused call per step (one
    call per layer when every layer's hidden state is returned) and give the logits, hidden states and cache of the
    unfused layer code."""
    from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM

    require_extension()
    model = Emu3ForCausalLM.from_pretrained(str(fixtures_dir / "llm"))
    layers = model.config.num_hidden_layers
    ref = np.load(sorted((fixtures_dir / "refs").glob("llm_forward_*.npz"))[0])
    ids, mask = ref["input_ids"], ref["attention_mask"]
    split = ids.shape[1] - 3
    calls = []
    fused_step = ops.decoder_step
    monkeypatch.setattr(ops, "decoder_step", lambda *a: calls.append(len(a[2])) or fused_step(*a))

    def decode(fused, hidden_states=False):
        monkeypatch.setattr(ops, "decoder_step_available", lambda x: fused)
        with paddle.no_grad():
            out = model(ids[:, :split], attention_mask=mask[:, :split], use_cache=True)
            cache, logits, hidden = out.past_key_values, [], []
            for i in range(split, ids.shape[1]):
                out = model(ids[:, i:i + 1], attention_mask=mask[:, :i + 1], past_key_values=cache, use_cache=True,
                            output_hidden_states=hidden_states)
                logits.append(out.logits.numpy())
                hidden += [h.numpy() for h in out.hidden_states or []]
        return np.concatenate(logits, axis=1), cache, hidden

    got, got_cache, _ = decode(True)
    assert calls == [layers] * 3
    # default positions continue the cache: the original's plain forward (refs "logits") at the real tokens
    assert np.abs(got - ref["logits"][:, split:])[mask[:, split:].astype(bool)].max() < 1e-4
    want, want_cache, want_hidden = decode(False, hidden_states=True)
    assert calls == [layers] * 3
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for a, b in zip(got_cache.keys + got_cache.values, want_cache.keys + want_cache.values):
        np.testing.assert_allclose(a.numpy()[:, :, :ids.shape[1]], b.numpy()[:, :, :ids.shape[1]], atol=1e-5)
    got_per_layer, _, got_hidden = decode(True, hidden_states=True)
    assert calls == [layers] * 3 + [1] * (3 * layers)
    np.testing.assert_allclose(got_per_layer, want, rtol=1e-4, atol=1e-4)
    assert len(got_hidden) == len(want_hidden) == 3 * (layers + 1)
    for a, b in zip(got_hidden, want_hidden):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_decoder_step_through_several_layers(ext_only):
    """One call over three layers equals the layers one after the other (numpy), each with its own cache."""
    layers = [_step_inputs(2, 64, 8, 2, 16, 96, 30, 17, "full", seed) for seed in (5, 6, 7)]
    x, _, _, _, slot, pos, inv_freq, mask = layers[0]
    want = x
    for _, weights, keys, values, *_ in layers:
        want, want_keys, _ = np_decoder_step(want, weights, keys, values, slot, pos, inv_freq, mask, 1e-6)
    keys_t = [t(layer[2]) for layer in layers]
    values_t = [t(layer[3]) for layer in layers]
    with paddle.no_grad():
        y = ops.decoder_step(t(x[:, None]), [t(w) for layer in layers for w in layer[1]], keys_t, values_t, slot,
                             t(pos[:, None]), t(inv_freq), t(mask), 1e-6)
    np.testing.assert_allclose(y.numpy()[:, 0], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(keys_t[2].numpy()[:, :, slot], want_keys[:, :, slot], rtol=1e-4, atol=1e-4)


def test_decoder_step_rejects_bad_arguments(ext_only):
    x, weights, keys, values, slot, pos, inv_freq, mask = _step_inputs(*STEP_CASES[1])
    args = [t(x[:, None]), [t(w) for w in weights], [t(keys)], [t(values)], slot, t(pos[:, None]), t(inv_freq)]
    with paddle.no_grad():
        with pytest.raises(Exception, match="mask must be"):
            ops.decoder_step(*args, t(mask[:, :, :, :-1]), 1e-6)
        with pytest.raises(Exception, match="outside the cache"):
            ops.decoder_step(*args[:4], keys.shape[2], *args[5:], t(mask), 1e-6)
        with pytest.raises(Exception, match="down_proj"):
            bad = [t(w) for w in weights[:8]] + [t(weights[8][:-1])]
            ops.decoder_step(args[0], bad, *args[2:], t(mask), 1e-6)
        with pytest.raises(Exception, match="9 weights"):
            ops.decoder_step(args[0], args[1], args[2] * 2, args[3] * 2, *args[4:], t(mask), 1e-6)


def test_decoder_step_not_available_with_gradients_or_disabled(monkeypatch):
    x = paddle.zeros([1, 1, 8])
    assert not ops.decoder_step_available(x)  # gradients are recorded outside no_grad
    monkeypatch.setattr(ops, "CPU_EXT_OPS", ops.CPU_EXT_OPS - {"decoder_step"})
    with paddle.no_grad():
        assert not ops.decoder_step_available(x)


# ----------------------------------------------------------------------------------------------- dispatch
def _fallback_of(name):
    """The original fallback function, also while ext_only has replaced the module attribute."""
    return ORIGINAL_FALLBACK[name]


def test_disable_env_forces_fallback(monkeypatch):
    monkeypatch.setenv("PADDLEMIX_DISABLE_EXT_OPS", "1")
    monkeypatch.setattr(ops, "_EXT_CHECKED", False)
    monkeypatch.setattr(ops, "_EXT", None)
    assert ops.extension() is None
    assert set(ops.report()["cpu"].values()) == {"fallback"}
    x, w = _rms_inputs((2, 16), 0)
    np.testing.assert_allclose(ops.rms_norm(t(x), t(w), 1e-6).numpy(), np_rms_norm(x, w, 1e-6), rtol=2e-5, atol=2e-6)


def test_gradients_flow_to_a_parameter_alone():
    """With only the weight wanting gradients (x does not), rms_norm's backward gives the weight its gradient."""
    x, w = _rms_inputs((2, 16), 0)
    weight = paddle.create_parameter([16], "float32", default_initializer=paddle.nn.initializer.Assign(w))
    y = ops.rms_norm(t(x), weight, 1e-6)
    y.sum().backward()
    np.testing.assert_allclose(weight.grad.numpy(), (x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)).sum(0),
                               rtol=1e-4)
