"""The training ops (paddlemix/ops/autograd.py and ops.softmax_xent_): values and gradients against float64 numpy.

Gradients are checked against central finite differences of float64 numpy forwards written here, so the reference
shares no code with the backward passes under test. The suite runs twice in CI (compiled extension, then the
pure-Paddle fallback); the ``ext_only`` tests prove the kernels ran where the extension is built.
"""

import numpy as np
import paddle
import pytest

import paddlemix.ops as ops
from paddlemix.models.emu3.modeling_emu3 import additive_mask
from paddlemix.ops import fallback
from test_ops import require_extension

F32 = np.float32


def numeric_grad(f, arrays, index, cotangent, eps=1e-6):
    """d/d arrays[index] of sum(f(*arrays) * cotangent), by central differences in float64."""
    x = arrays[index]
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = (f(*arrays) * cotangent).sum()
        x[i] = old - eps
        down = (f(*arrays) * cotangent).sum()
        x[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


def paddle_grads(f, arrays, cotangent):
    """Gradients of sum(f(*tensors) * cotangent) by Paddle's autograd (float32 tensors from the float64 arrays)."""
    tensors = [paddle.to_tensor(a.astype(F32), stop_gradient=False) for a in arrays]
    out = f(*tensors)
    (out * paddle.to_tensor(cotangent.astype(F32))).sum().backward()
    return out.numpy(), [t.grad.numpy() for t in tensors]


@pytest.fixture
def ext_only(monkeypatch):
    """The extension's kernels must run: the fallbacks of the training ops raise when reached."""
    require_extension()

    def refuse(*args, **kwargs):
        raise AssertionError("the fallback ran instead of the extension")

    for name in ("rms_norm", "rms_norm_grad", "rotary_embedding", "softmax_xent_", "masked_softmax_"):
        monkeypatch.setattr(fallback, name, refuse)


# ----------------------------------------------------------------------------------------------- rms_norm
def np_rms_norm64(x, w, eps):
    return w * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


@pytest.mark.parametrize("shape,eps,seed", [((2, 3, 17), 1e-6, 0), ((4, 64), 1e-5, 1)])
def test_rms_norm_gradients(shape, eps, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(shape) * 2, 1 + 0.1 * rng.standard_normal(shape[-1])
    cot = rng.standard_normal(shape)
    y, (dx, dw) = paddle_grads(lambda a, b: ops.rms_norm(a, b, eps), [x, w], cot)
    np.testing.assert_allclose(y, np_rms_norm64(x, w, eps), rtol=1e-5, atol=1e-5)
    f = lambda a, b: np_rms_norm64(a, b, eps)  # noqa: E731
    np.testing.assert_allclose(dx, numeric_grad(f, [x, w], 0, cot), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, numeric_grad(f, [x, w], 1, cot), rtol=1e-4, atol=1e-4)


def test_rms_norm_grad_kernel(ext_only):
    rng = np.random.default_rng(3)
    x, w, dy = (rng.standard_normal(s).astype(F32) for s in ((300, 40), (40,), (300, 40)))
    dx, dw = ops.autograd.rms_norm_grad(*(paddle.to_tensor(a) for a in (x, w, dy)), 1e-6)
    f = lambda a, b: np_rms_norm64(a, b, 1e-6)  # noqa: E731
    args = [x.astype(np.float64)[:20], w.astype(np.float64)]
    np.testing.assert_allclose(dx.numpy()[:20], numeric_grad(f, args, 0, dy[:20]), rtol=1e-4, atol=1e-4)
    dw_ref = ((dy * x) / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6)).sum(0)
    np.testing.assert_allclose(dw.numpy(), dw_ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------- rotary
def np_rotary64(x, pos, inv_freq):
    ang = pos[..., None] * inv_freq  # [B, L, D/2]
    cos, sin = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def test_rotary_gradients():
    rng = np.random.default_rng(4)
    q, k = rng.standard_normal((2, 5, 4, 8)), rng.standard_normal((2, 5, 2, 8))
    pos = np.array([[0, 1, 2, 3, 4], [7, 3, 0, 9, 100]])
    inv_freq = (1.0 / 10000 ** (np.arange(0, 8, 2) / 8)).astype(F32)
    cq, ck = rng.standard_normal(q.shape), rng.standard_normal(k.shape)
    tq, tk = (paddle.to_tensor(a.astype(F32), stop_gradient=False) for a in (q, k))
    oq, ok = ops.rotary_embedding(tq, tk, paddle.to_tensor(pos), paddle.to_tensor(inv_freq))
    ((oq * paddle.to_tensor(cq.astype(F32))).sum() + (ok * paddle.to_tensor(ck.astype(F32))).sum()).backward()
    f = lambda x: np_rotary64(x, pos.astype(np.float64), inv_freq.astype(np.float64))  # noqa: E731
    np.testing.assert_allclose(oq.numpy(), f(q), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tq.grad.numpy(), numeric_grad(f, [q], 0, cq), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tk.grad.numpy(), numeric_grad(f, [k], 0, ck), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------- attention
def np_attention64(q, k, v, mask):
    """Causal grouped-query attention in float64: q [B, L, H, D], k, v [B, L, Hk, D], additive mask [B, 1, L, L]."""
    heads, kv_heads = q.shape[2], k.shape[2]
    out = np.zeros_like(q)
    for h in range(heads):
        j = h // (heads // kv_heads)
        s = np.einsum("bld,bsd->bls", q[:, :, h], k[:, :, j]) / np.sqrt(q.shape[3]) + mask[:, 0]
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, :, h] = np.einsum("bls,bsd->bld", p, v[:, :, j])
    return out


@pytest.mark.parametrize("length,block,padded", [(7, 3, False), (7, 3, True), (6, 8, True), (8, 4, False)])
def test_causal_attention_values_and_gradients(length, block, padded):
    """Query blocks that do and do not divide the length, one block for everything, left padding (masked keys)."""
    rng = np.random.default_rng(length * 10 + block)
    q, k, v = (rng.standard_normal((2, length, h, 4)) for h in (4, 2, 2))
    keys = np.ones((2, length), np.int64)
    if padded:
        keys[1, :2] = 0
    mask = additive_mask(paddle.to_tensor(keys), length, 0, paddle.float32)
    mask64 = mask.numpy().astype(np.float64)
    # padding queries see no key: their outputs are left out (no label ever reads them)
    cot = rng.standard_normal(q.shape) * keys[:, :, None, None]
    out, grads = paddle_grads(lambda a, b, c: ops.causal_attention(a, b, c, mask, block), [q, k, v], cot)
    f = lambda a, b, c: np_attention64(a, b, c, mask64)  # noqa: E731
    real = keys.astype(bool)
    np.testing.assert_allclose(out[real], f(q, k, v)[real], rtol=1e-5, atol=1e-5)
    for i, grad in enumerate(grads):
        np.testing.assert_allclose(grad, numeric_grad(f, [q, k, v], i, cot), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------- softmax_xent
def np_softmax_xent64(logits, targets):
    """Per-row cross-entropy and softmax - onehot in float64; rows with target -100 give 0 and a zero row."""
    x = logits.astype(np.float64)
    m = x.max(-1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(-1)) + m[:, 0]
    grad = np.exp(x - lse[:, None])
    loss = np.zeros(len(targets))
    for r, t in enumerate(targets):
        if t == -100:
            grad[r] = 0
        else:
            loss[r] = lse[r] - x[r, t]
            grad[r, t] -= 1
    return loss, grad


def _check_softmax_xent(rows, vocab, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((rows, vocab)) * 4).astype(F32)
    targets = rng.integers(0, vocab, rows)
    targets[::3] = -100
    x = paddle.to_tensor(logits)
    loss = ops.softmax_xent_(x, paddle.to_tensor(targets))
    ref_loss, ref_grad = np_softmax_xent64(logits, targets)
    np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x.numpy(), ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows,vocab,seed", [(7, 13, 0), (5, 5000, 1)])
def test_softmax_xent(rows, vocab, seed):
    _check_softmax_xent(rows, vocab, seed)


def test_softmax_xent_kernel(ext_only):
    _check_softmax_xent(9, 4099, 2)  # several 2048-wide sum blocks and a ragged tail


@pytest.mark.parametrize("bad", [-1, 13])
def test_softmax_xent_rejects_targets_outside_the_vocabulary(bad):
    x = paddle.zeros([2, 13])
    with pytest.raises((ValueError, OSError), match=r"-100 .*\[0, 13\)"):
        ops.softmax_xent_(x, paddle.to_tensor(np.array([0, bad])))


def test_causal_attention_with_frozen_queries():
    """Only k and v want gradients: q's gradient is left out, k's and v's are still right."""
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 5, h, 4)) for h in (2, 1, 1))
    mask = additive_mask(paddle.ones([1, 5], "int64"), 5, 0, paddle.float32)
    tq = paddle.to_tensor(q.astype(F32))
    tk, tv = (paddle.to_tensor(a.astype(F32), stop_gradient=False) for a in (k, v))
    cot = rng.standard_normal(q.shape)
    (ops.causal_attention(tq, tk, tv, mask, 2) * paddle.to_tensor(cot.astype(F32))).sum().backward()
    assert tq.grad is None
    f = lambda a, b, c: np_attention64(a, b, c, mask.numpy().astype(np.float64))  # noqa: E731
    np.testing.assert_allclose(tk.grad.numpy(), numeric_grad(f, [q, k, v], 1, cot), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tv.grad.numpy(), numeric_grad(f, [q, k, v], 2, cot), rtol=1e-4, atol=1e-4)


def np_attention_dropout64(q, k, v, mask, keeps, block, rate):
    """np_attention64 with dropout: each query block's probabilities [B, Hk, g * n, end] (rows group-major) times
    keep / (1 - rate)."""
    length, heads, dim = q.shape[1:]
    group = heads // k.shape[2]
    out = np.zeros_like(q)
    for i, start in enumerate(range(0, length, block)):
        end = min(start + block, length)
        n = end - start
        for h in range(heads):
            j, r = h // group, h % group
            s = np.einsum("bld,bsd->bls", q[:, start:end, h], k[:, :end, j]) / np.sqrt(dim) + mask[:, 0, start:end, :end]
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            p = p * keeps[i][:, j, r * n:(r + 1) * n] / (1 - rate)
            out[:, start:end, h] = np.einsum("bls,bsd->bld", p, v[:, :end, j])
    return out


def test_causal_attention_dropout_values_and_gradients():
    """Dropout on the probabilities: with the keep masks the op drew (paddle.rand >= rate per block, redrawn here
    from the same seed), values and gradients equal the float64 reference; two seeds give different outputs."""
    length, block, rate = 7, 3, 0.3
    rng = np.random.default_rng(11)
    q, k, v = (rng.standard_normal((2, length, h, 4)) for h in (4, 2, 2))
    mask = additive_mask(paddle.ones([2, length], "int64"), length, 0, paddle.float32)
    cot = rng.standard_normal(q.shape)
    paddle.seed(5)
    out, grads = paddle_grads(lambda a, b, c: ops.causal_attention(a, b, c, mask, block, rate), [q, k, v], cot)
    paddle.seed(5)
    keeps = [(paddle.rand([2, 2, 2 * (min(s + block, length) - s), min(s + block, length)]) >= rate).numpy()
             for s in range(0, length, block)]
    assert 0 < sum(int((~m).sum()) for m in keeps) < sum(m.size for m in keeps)  # some dropped, some kept
    f = lambda a, b, c: np_attention_dropout64(a, b, c, mask.numpy().astype(np.float64), keeps, block, rate)  # noqa
    np.testing.assert_allclose(out, f(q, k, v), rtol=1e-5, atol=1e-5)
    for i, grad in enumerate(grads):
        np.testing.assert_allclose(grad, numeric_grad(f, [q, k, v], i, cot), rtol=1e-4, atol=1e-4)
    paddle.seed(6)
    other = ops.causal_attention(*(paddle.to_tensor(a.astype(F32)) for a in (q, k, v)), mask, block, rate)
    assert not np.allclose(other.numpy(), out)
