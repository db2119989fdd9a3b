"""Fused ops used by the Emu3 models, each through one function.

Each function calls the compiled extension ``paddlemix_ops`` (built by ``external_ops/setup.py``) when it can be
imported and supports the op on the tensor's device and dtype, and the pure-Paddle implementation in ``fallback.py``
otherwise. ``PADDLEMIX_DISABLE_EXT_OPS=1`` forces the fallback. Which one is active is logged once.

While gradients are being recorded, ``rms_norm`` and ``rotary_embedding`` run as the PyLayers of ``autograd.py``
(the same forward, a written-out backward), and ``causal_attention`` is the training attention.
On CPU the extension is used only for the ops measured faster than their fallback (``CPU_EXT_OPS``; the numbers
are in benchmarks/RESULTS.md, produced by benchmarks/bench_ops.py).
"""

import logging
import os

import paddle

from . import fallback

logger = logging.getLogger(__name__)

# ops whose CPU kernel is used by default (each measured faster than its fallback by benchmarks/bench_ops.py)
CPU_EXT_OPS = frozenset(
    {"rms_norm", "rotary_embedding", "vq_nearest", "cfg_sample", "conv2d", "linear", "decoder_step", "group_norm",
     "masked_softmax", "softmax_xent"}
)
# ops with only a CPU kernel (no CUDA one): on GPU they always take the fallback
_CPU_ONLY_OPS = frozenset({"conv2d", "linear", "decoder_step", "group_norm", "masked_softmax", "softmax_xent"})
_GPU_DTYPES = (paddle.float32, paddle.bfloat16, paddle.float16)

_EXT = None
_EXT_CHECKED = False
_EXT_CUDA = False


def extension():
    """The compiled extension module, or None (not built, or disabled by PADDLEMIX_DISABLE_EXT_OPS=1)."""
    global _EXT, _EXT_CHECKED, _EXT_CUDA
    if not _EXT_CHECKED:
        _EXT_CHECKED = True
        if os.environ.get("PADDLEMIX_DISABLE_EXT_OPS", "0") not in ("", "0"):
            logger.info("paddlemix ops: PADDLEMIX_DISABLE_EXT_OPS is set, using the pure-Paddle fallback")
        else:
            try:
                import paddlemix_ops as ext
            except ImportError:
                logger.info("paddlemix ops: extension not built (see external_ops/README.md), using the fallback")
            else:
                _EXT = ext
                _EXT_CUDA = bool(int(ext.pmx_build_info(paddle.zeros([1])).numpy()[0]))
                logger.info(
                    "paddlemix ops: using the compiled extension %s (CUDA kernels: %s)",
                    getattr(ext, "__file__", ext),
                    "yes" if _EXT_CUDA else "no",
                )
    return _EXT


def report():
    """A dict saying, for each op, what runs on CPU and on GPU: 'extension' or 'fallback'."""
    ext = extension()
    ops = ("rms_norm", "rotary_embedding", "vq_nearest", "cfg_sample", "conv2d", "linear", "decoder_step",
           "group_norm", "masked_softmax", "softmax_xent")
    return {
        "extension": getattr(ext, "__file__", None) if ext is not None else None,
        "cpu": {op: "extension" if ext is not None and op in CPU_EXT_OPS else "fallback" for op in ops},
        "gpu": {
            op: "extension" if ext is not None and _EXT_CUDA and op not in _CPU_ONLY_OPS else "fallback" for op in ops
        },
    }


def _records_grad(*tensors):
    return paddle.is_grad_enabled() and any(not t.stop_gradient for t in tensors)


def _use_ext(op, tensors, dtypes):
    """Whether the extension can run `op` on these tensors (device, dtype, no gradient wanted)."""
    if extension() is None:
        return False
    x = tensors[0]
    if _records_grad(*tensors):
        return False
    if x.place.is_cpu_place():
        return op in CPU_EXT_OPS and all(t.dtype == paddle.float32 for t in dtypes)
    if x.place.is_gpu_place():
        same_dtype = all(t.dtype == x.dtype for t in dtypes)
        return _EXT_CUDA and op not in _CPU_ONLY_OPS and same_dtype and x.dtype in _GPU_DTYPES
    return False


def _tensor_on(x, dtype, place, shape):
    """x (tensor, array or list) as a tensor of `dtype` and `shape` on `place` (x itself when it already is one)."""
    if not isinstance(x, paddle.Tensor):
        return paddle.to_tensor(x, dtype=dtype, place=place).reshape(shape)
    if x.dtype != dtype:
        x = x.astype(dtype)
    if not x.place._equals(place):
        x = x._copy_to(place, True)
    return x if x.shape == shape else x.reshape(shape)


_CONSTANTS = {}


def _constant(data, dtype, place):
    """`data` (a small nested list) as a cached tensor: the defaults of per-step arguments are built once, not once
    per step. Callers must not modify the result."""
    key = (repr(data), dtype, str(place))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = paddle.to_tensor(data, dtype=dtype, place=place)
    return _CONSTANTS[key]


def rms_norm(x, weight, eps):
    if _records_grad(x, weight):
        return autograd.RMSNorm.apply(x, weight, eps)
    if _use_ext("rms_norm", [x, weight], [x, weight]):
        return _EXT.pmx_rms_norm(x, weight, float(eps))
    return fallback.rms_norm(x, weight, eps)


def rotary_embedding(q, k, position_ids, inv_freq):
    if _records_grad(q, k):
        return autograd.Rotary.apply(q, k, position_ids, inv_freq)
    if _use_ext("rotary_embedding", [q, k], [q, k]) and q.shape[-1] % 2 == 0:
        return tuple(
            _EXT.pmx_rotary_embedding(q, k, position_ids.astype("int64"), inv_freq.astype("float32"))
        )
    return fallback.rotary_embedding(q, k, position_ids, inv_freq)


def _pair(v, name):
    pair = (v, v) if isinstance(v, int) else tuple(int(i) for i in v)
    if len(pair) != 2:
        raise ValueError(f"conv2d: {name} must be an int or a pair, got {v!r}")
    return pair


def conv2d(x, weight, bias=None, stride=1, padding=0, upsample=1):
    """2-D convolution, no groups or dilation. stride: int or (sh, sw); padding (zeros): int, (ph, pw) or
    (top, bottom, left, right); upsample: an integer factor: the convolution of ``F.interpolate(x,
    scale_factor=upsample, mode="nearest")``. On CPU float32 the extension builds the im2col columns band by band in
    a small workspace (reading x through the upsampling, which is never materialised) and multiplies them with
    Paddle's matmul; the fallback is ``F.interpolate`` and ``F.conv2d``."""
    stride = _pair(stride, "stride")
    pad = (padding,) * 4 if isinstance(padding, int) else tuple(int(p) for p in padding)
    if len(pad) == 2:
        pad = (pad[0], pad[0], pad[1], pad[1])
    if len(pad) != 4 or min(pad) < 0 or min(stride) < 1:
        raise ValueError(f"conv2d: stride must be positive and padding non-negative, got {stride}, {padding!r}")
    if not isinstance(upsample, int) or isinstance(upsample, bool) or upsample < 1:
        raise ValueError(f"conv2d: upsample must be a positive integer factor, got {upsample!r}")
    tensors = [x, weight] if bias is None else [x, weight, bias]
    if not (x.ndim == 4 and _use_ext("conv2d", tensors, tensors)):
        return fallback.conv2d(x, weight, bias, stride, pad, upsample)
    if bias is None:
        bias = paddle.zeros([weight.shape[0]], dtype="float32")
    x = x if x.is_contiguous() else x.contiguous()
    return _EXT.pmx_conv2d(x, weight, bias, *stride, *pad, upsample)


def group_norm(x, weight, bias, groups, eps, scale=None, shift=None, silu=False):
    """GroupNorm of x [N, C, H, W] (weight, bias [C]); with scale and shift [N, C, hs, ws] (the VQ decoder's SpatialNorm:
    1x1 convolutions of the quantized latent at its own size), ``y * resize(scale) + resize(shift)`` with a nearest
    resize to H x W; then SiLU when ``silu``. On CPU float32 the extension does it in one pass over the output
    without materialising the resized maps; the fallback is F.group_norm, F.interpolate and F.silu."""
    if (scale is None) != (shift is None):
        raise ValueError("group_norm: scale and shift go together")
    tensors = [x, weight, bias] + ([scale, shift] if scale is not None else [])
    if x.ndim == 4 and _use_ext("group_norm", tensors, tensors):
        x = x if x.is_contiguous() else x.contiguous()
        if scale is not None:
            scale = scale if scale.is_contiguous() else scale.contiguous()
            shift = shift if shift.is_contiguous() else shift.contiguous()
        return _EXT.pmx_group_norm(x, weight, bias, scale, shift, int(groups), float(eps), bool(silu))
    return fallback.group_norm(x, weight, bias, groups, eps, scale, shift, silu)


def masked_softmax_(scores, mask, scale):
    """softmax(scores * scale + mask) over the last axis of attention scores [B, H, R, S], in place where it can
    (returns the probabilities, float32). mask: None, [B or 1, 1, L, S] broadcast over the heads and the R / L query
    groups of each head, or [B, H, R, S]. On CPU float32 the extension does it in one pass over the scores; the
    fallback is Paddle's scale_, add_ and softmax_ (half-precision scores are masked in float32)."""
    tensors = [scores] if mask is None else [scores, mask]
    if scores.ndim == 4 and scores.is_contiguous() and _use_ext("masked_softmax", tensors, tensors):
        if mask is not None and not mask.is_contiguous():
            mask = mask.contiguous()
        _EXT.pmx_masked_softmax(scores, mask, float(scale))
        return scores
    return fallback.masked_softmax_(scores, mask, scale)


def causal_attention(q, k, v, mask, block, dropout=0.0):
    """Causal grouped-query attention for training (no cache): q [B, L, H, D], k, v [B, L, Hk, D], the additive mask
    [B or 1, 1, L, L] (causal plus padding), computed over query blocks of ``block`` rows, with ``dropout`` on the
    probabilities; the backward recomputes the probabilities instead of keeping them (``autograd.CausalAttention``).
    Returns [B, L, H, D]."""
    return autograd.CausalAttention.apply(q, k, v, mask, block, float(dropout))


def softmax_xent_(logits, targets):
    """Cross-entropy of float32 logits [N, V] against targets [N] (int64, -100 = ignored), and its gradient in place:
    returns the per-row loss [N] (logsumexp - logit of the target; 0 on ignored rows) and leaves softmax - onehot
    (zero rows where ignored) in ``logits``. Targets are checked to be -100 or in [0, V)."""
    if logits.ndim == 2 and logits.is_contiguous() and _use_ext("softmax_xent", [logits, targets], [logits]):
        return _EXT.pmx_softmax_xent(logits, targets if targets.dtype == paddle.int64 else targets.astype("int64"))[0]
    return fallback.softmax_xent_(logits, targets)


# ops.linear uses the extension's kernel (a GEMV-shaped product that streams the weight once) for at most
# LINEAR_MAX_ROWS rows and weights of at least LINEAR_MIN_WEIGHTS elements; other products go to Paddle's matmul
# (MKL's GEMM reuses each weight for many rows; on small weights MKL's GEMV and its lower call overhead won). Measured
# on a 2-core AMD EPYC (benchmarks/bench_ops.py, 2 threads): the lm config's lm_head [512, 40000] 3.4 -> 2.2 ms at
# one row, 4.6 -> 3.2 ms at two. A decode step's layer projections run inside ops.decoder_step.
LINEAR_MAX_ROWS = 16
LINEAR_MIN_WEIGHTS = 1 << 19


def linear(x, weight, scale=None):
    """x [..., K] @ weight [K, N] (Paddle's [in, out] layout, as ``nn.Linear.weight``), no bias; with ``scale`` [N]
    float32, weight is int8 (weight-only quantization): ``(x @ weight) * scale``. A float32 x may also take a bf16
    weight (bf16 storage on CPU); the weight is then widened to float32 as it is read.

    On CPU float32, with at most ``LINEAR_MAX_ROWS`` rows (a decode step) and a float32 weight of at least
    ``LINEAR_MIN_WEIGHTS`` elements, or a bf16 / int8 weight of any size, the extension streams the weight once across
    the threads; everything else (and the fallback) is ``fallback.linear`` (``paddle.matmul``, over blocks of widened
    columns for a bf16 or int8 weight). It runs for every projection of every decode step, so the checks are the
    cheap ones (dtype identity, not ``==``)."""
    shape, w_shape = x.shape, weight.shape
    if not shape or len(w_shape) != 2 or shape[-1] != w_shape[0]:
        raise ValueError(f"linear: x [..., K] and weight [K, N] must share K, got {shape} and {w_shape}")
    if (scale is not None) != (weight.dtype is paddle.int8) or (scale is not None and scale.shape != [w_shape[1]]):
        raise ValueError(f"linear: an int8 weight needs a scale [N] = [{w_shape[1]}] and other weights none, got "
                         f"a {weight.dtype} weight and scale {None if scale is None else scale.shape}")
    rows = 1
    for size in shape[:-1]:
        rows *= size
    stored = weight.dtype is paddle.bfloat16 or weight.dtype is paddle.int8
    use = (
        rows <= LINEAR_MAX_ROWS
        and (stored or (weight.dtype is paddle.float32 and w_shape[0] * w_shape[1] >= LINEAR_MIN_WEIGHTS))
        and extension() is not None
        and "linear" in CPU_EXT_OPS
        and x.dtype is paddle.float32
        and x.place.is_cpu_place()
        and (scale is None or scale.dtype is paddle.float32)
        and (not paddle.is_grad_enabled() or (x.stop_gradient and weight.stop_gradient))
    )
    if not use:
        return fallback.linear(x, weight) if scale is None else fallback.linear(x, weight, scale)
    return _EXT.pmx_linear(x if x.is_contiguous() else x.contiguous(), weight, scale)


def decoder_step_available(x):
    """Whether ``decoder_step`` can run on x (the extension is built and enabled, CPU float32, no gradients).

    There is no fallback function for it: the model's own layer code is the unfused path."""
    return (
        extension() is not None
        and "decoder_step" in CPU_EXT_OPS
        and x.dtype is paddle.float32
        and x.place.is_cpu_place()
        and not paddle.is_grad_enabled()
    )


def decoder_step(x, weights, keys, values, slot, position_ids, inv_freq, mask, eps):
    """One decode step (one new token per row) through L consecutive Llama-style decoder layers (silu MLP,
    rotate-half RoPE, grouped-query attention) as one op: see external_ops/csrc/kernels/decoder_step_cpu.h. Call only
    where ``decoder_step_available(x)``.

    x [B, 1, hidden]; weights: 9 per layer, layer after layer: input_layernorm, q/k/v/o_proj,
    post_attention_layernorm, gate/up/down_proj weights (projections [in, out], all float32 or all bf16, or all int8
    and then followed by the layer's 7 projection scales [out] in the same order: 16 per layer); keys, values: one
    [B, kv_heads, capacity, head_dim] tensor per layer: each layer's new key and value are written at ``slot`` in
    place and its attention reads slots 0 .. slot; position_ids [B, 1] int64; inv_freq [head_dim / 2]; mask: additive
    float32 [B, 1 or kv_heads, 1 or heads / kv_heads, capacity]. Returns the last layer's output [B, 1, hidden].
    """
    out = _EXT.pmx_decoder_step(
        x if x.is_contiguous() else x.contiguous(), weights, keys, values, position_ids, inv_freq,
        mask if mask.is_contiguous() else mask.contiguous(), int(slot), float(eps),
    )
    return out[0]


def vq_nearest(latents, codebook):
    z, e = latents.astype("float32"), codebook.astype("float32")
    if _use_ext("vq_nearest", [z, e], [z, e]):
        return _EXT.pmx_vq_nearest(z, e)
    return fallback.vq_nearest(latents, codebook)


def cfg_sample(cond_logits, uncond_logits, guidance_scale, allowed, top_k, top_p, temperature, random):
    guide = uncond_logits is not None and guidance_scale is not None and guidance_scale != 1
    tensors = [cond_logits, uncond_logits] if guide else [cond_logits]
    if not _use_ext("cfg_sample", tensors, tensors):
        return fallback.cfg_sample(
            cond_logits, uncond_logits, guidance_scale, allowed, top_k, top_p, temperature, random
        )
    batch, vocab = cond_logits.shape
    place = cond_logits.place
    if allowed is None:
        allowed = _constant([[0, vocab]] * batch, paddle.int64, place)
    else:
        allowed = _tensor_on(allowed, paddle.int64, place, [batch, 2])
    if random is None:
        uniforms = _constant([0.0] * batch, paddle.float32, place)
    else:
        uniforms = _tensor_on(random, paddle.float32, place, [batch])
    use_top_p = top_p is not None and top_p < 1.0
    use_temperature = random is not None and temperature is not None and temperature != 1.0
    return _EXT.pmx_cfg_sample(
        cond_logits,
        uncond_logits if guide else cond_logits,
        allowed,
        uniforms,
        guide,
        float(guidance_scale) if guide else 1.0,
        random is None,
        int(top_k) if top_k is not None and top_k > 0 else 0,
        use_top_p,
        float(1.0 - top_p) if use_top_p else 0.0,
        use_temperature,
        float(temperature) if use_temperature else 1.0,
    )


from . import autograd  # noqa: E402  (its PyLayers call the functions above)
