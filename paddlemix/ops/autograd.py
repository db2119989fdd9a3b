"""The training versions of the fused ops: PyLayers whose forward runs the same kernel as inference and whose backward
is written out, so that autograd records one node per op instead of the fallback's chain of elementwise ops (each
of which keeps its inputs and, for slices and concats, allocates full-size zero gradients).

* ``RMSNorm``: forward ``rms_norm``; backward the extension's ``rms_norm_grad`` kernel (CPU float32), Paddle ops
  elsewhere. Keeps x only.
* ``Rotary``: forward ``rotary_embedding``; the backward is the inverse rotation, i.e. the same op at ``-inv_freq``.
  Keeps nothing but the positions.
* ``CausalAttention``: grouped-query attention over causal query blocks, flash-attention style: the forward keeps
  q, k, v and the output, never the [rows, keys] probabilities; the backward recomputes each block's probabilities
  and gets dQ, dK, dV with five matmuls per block. With attention dropout it keeps each block's one-byte keep mask.

The forward and backward call the dispatching functions of ``paddlemix.ops`` (extension or fallback), with gradient
recording off.
"""

import contextlib
import math

import paddle
from paddle.autograd import PyLayer

import paddlemix.ops as ops

from . import fallback


class RMSNorm(PyLayer):
    @staticmethod
    def forward(ctx, x, weight, eps):
        with paddle.no_grad():
            y = ops.rms_norm(x, weight, eps)
        ctx.save_for_backward(x.contiguous(), weight)
        ctx.eps, ctx.inputs_stop = eps, (x.stop_gradient, weight.stop_gradient)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        with paddle.no_grad():
            grads = rms_norm_grad(x, weight, dy, ctx.eps)
        return tuple(None if stop else g for g, stop in zip(grads, ctx.inputs_stop))


def rms_norm_grad(x, weight, dy, eps):
    """(dx, dweight) of y = weight * x * rsqrt(mean(x^2) + eps) for the output gradient dy, statistics in float32."""
    ext = ops.extension()
    if ext is not None and x.place.is_cpu_place() and x.dtype == weight.dtype == dy.dtype == paddle.float32:
        dx, dweight = ext.pmx_rms_norm_grad(x, weight, dy.contiguous(), float(eps))
        return dx, dweight
    return fallback.rms_norm_grad(x, weight, dy, eps)


class Rotary(PyLayer):
    @staticmethod
    def forward(ctx, q, k, position_ids, inv_freq):
        with paddle.no_grad():
            q_out, k_out = ops.rotary_embedding(q, k, position_ids, inv_freq)
        ctx.save_for_backward(position_ids, inv_freq)
        ctx.inputs_stop = (q.stop_gradient, k.stop_gradient)
        return q_out, k_out

    @staticmethod
    def backward(ctx, dq, dk):
        position_ids, inv_freq = ctx.saved_tensor()
        with paddle.no_grad():  # the rotation's transpose is the rotation by the opposite angle
            grads = ops.rotary_embedding(dq.contiguous(), dk.contiguous(), position_ids, -inv_freq)
        return tuple(None if stop else g for g, stop in zip(grads, ctx.inputs_stop))


@contextlib.contextmanager
def _dense_views():
    """Paddle's slice and transpose kernels that write a new dense tensor (``FLAGS_use_stride_kernel`` off) instead
    of strided views: the attention's per-block transposes, reshapes and concats then copy with the dedicated
    kernels (measured on the 2-core EPYC, Paddle 3.3.1, 2 threads: a transposed [4, 1024, 8, 64] float32 tensor made
    contiguous in 19.7 ms as a strided view, 0.3 ms by the dense transpose kernel; a whole train step of the
    benchmark's LM went from 7.3 to 6.4 s)."""
    flag = "FLAGS_use_stride_kernel"
    old = paddle.get_flags([flag])[flag]
    paddle.set_flags({flag: False})
    try:
        yield
    finally:
        paddle.set_flags({flag: old})


def _grouped(x, start, end, kv_heads):
    """Rows start:end of x [B, L, H, D] as [B, Hk, (H / Hk) * n, D]: query head i under KV head i // (H / Hk)."""
    bsz, _, heads, dim = x.shape
    return x[:, start:end].transpose([0, 2, 1, 3]).reshape([bsz, kv_heads, heads // kv_heads * (end - start), dim])


def _ungrouped(x, heads):
    """The inverse of ``_grouped``: [B, Hk, g * n, D] -> [B, n, H, D]."""
    bsz, _, rows, dim = x.shape
    return x.reshape([bsz, heads, rows * x.shape[1] // heads, dim]).transpose([0, 2, 1, 3])


def _block_probs(q, keys, mask, start, end, scale):
    """softmax(q[start:end] keys[:end]^T * scale + mask) [B, Hk, g * n, end] in float32, and the grouped queries."""
    qh = _grouped(q, start, end, keys.shape[1])
    scores = paddle.matmul(qh, keys[:, :, :end], transpose_y=True)
    return ops.masked_softmax_(scores, mask[:, :, start:end, :end], scale), qh


class CausalAttention(PyLayer):
    """out [B, L, H, D] = causal grouped-query attention of q [B, L, H, D] over k, v [B, L, Hk, D] with the additive
    mask [B or 1, 1, L, L] (causal, plus any padding), query blocks of ``block`` rows (keys after a block's last query
    are skipped: the causal mask hides them); ``dropout`` > 0: dropout on the probabilities as the original's eager
    attention (``paddle.rand`` draws, kept as one-byte masks for the backward)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, block, dropout):
        heads, scale = q.shape[2], 1.0 / math.sqrt(q.shape[3])
        keeps = []
        with paddle.no_grad(), _dense_views():
            keys, values = k.transpose([0, 2, 1, 3]), v.transpose([0, 2, 1, 3])  # [B, Hk, L, D]
            outs = []
            for start in range(0, q.shape[1], block):
                end = min(start + block, q.shape[1])
                probs, _ = _block_probs(q, keys, mask, start, end, scale)
                if dropout:
                    keeps.append(paddle.rand(probs.shape) >= dropout)
                    probs.multiply_(_kept(keeps[-1], dropout))
                outs.append(_ungrouped(paddle.matmul(probs.astype(values.dtype), values[:, :, :end]), heads))
            out = outs[0] if len(outs) == 1 else paddle.concat(outs, axis=1)
        # contiguous copies: non-reentrant recompute re-creates saved tensors from their buffers without strides
        ctx.save_for_backward(*(t.contiguous() for t in (q, keys, values, out, mask)), *keeps)
        ctx.block, ctx.scale, ctx.dropout = block, scale, dropout
        ctx.inputs_stop = (q.stop_gradient, k.stop_gradient, v.stop_gradient)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, keys, values, out, mask, *keeps = ctx.saved_tensor()
        block, scale, dropout = ctx.block, ctx.scale, ctx.dropout
        heads, length, kv_heads = q.shape[2], q.shape[1], keys.shape[1]
        with paddle.no_grad(), _dense_views():
            dq_blocks, dk_parts, dv_parts = [], [], []
            for i, start in enumerate(range(0, length, block)):
                end = min(start + block, length)
                probs, qh = _block_probs(q, keys, mask, start, end, scale)
                do = _grouped(dout, start, end, kv_heads)
                dp = paddle.matmul(do, values[:, :, :end], transpose_y=True).astype("float32")
                if dropout:  # out = (probs * kept) @ v: the dropped probabilities feed dV, dP passes through kept
                    kept = _kept(keeps[i], dropout)
                    dv_parts.append(paddle.matmul((probs * kept).astype(q.dtype), do, transpose_x=True))
                    dp.multiply_(kept)
                    delta = (probs * dp).sum(axis=-1, keepdim=True)
                else:  # sum_j probs * dp = sum_d dout * out
                    dv_parts.append(paddle.matmul(probs.astype(q.dtype), do, transpose_x=True))  # [B, Hk, end, D]
                    delta = (do * _grouped(out, start, end, kv_heads)).astype("float32").sum(axis=-1, keepdim=True)
                ds = dp.subtract_(delta).multiply_(probs).scale_(scale).astype(q.dtype)  # d(scores before scaling)
                dq_blocks.append(_ungrouped(paddle.matmul(ds, keys[:, :, :end]), heads))
                dk_parts.append(paddle.matmul(ds, qh, transpose_x=True))
            dq = dq_blocks[0] if len(dq_blocks) == 1 else paddle.concat(dq_blocks, axis=1)
            dk, dv = _sum_prefixes(dk_parts, block), _sum_prefixes(dv_parts, block)
            grads = (dq, dk.transpose([0, 2, 1, 3]), dv.transpose([0, 2, 1, 3]))
        return tuple(None if stop else g for g, stop in zip(grads, ctx.inputs_stop))


def _kept(keep, dropout):
    """The dropout factor of each probability: 1 / (1 - p) where kept, 0 where dropped (all 0 at p = 1)."""
    return keep.astype("float32").scale_(0.0 if dropout >= 1 else 1.0 / (1.0 - dropout))


def _sum_prefixes(parts, block):
    """parts[i]: a gradient [B, Hk, n_i, D] over the first n_i keys (n_i growing by ``block``) -> their sum over all
    keys, built key block by key block (key block j gets the parts that reach past its start)."""
    total = []
    for j in range(len(parts)):
        start, end = j * block, min((j + 1) * block, parts[-1].shape[2])
        acc = parts[j][:, :, start:end]
        for part in parts[j + 1:]:
            acc = acc + part[:, :, start:end]
        total.append(acc)
    return total[0] if len(total) == 1 else paddle.concat(total, axis=2)
