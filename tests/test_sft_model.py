"""Training behaviour of Emu3ForCausalLM (labels -> loss, dropout, recompute, the pad row) and the optimizer
arithmetic (schedules, clipping), each against an independent expectation."""

import math

import numpy as np
import paddle
import pytest

from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM, causal_lm_loss
from paddlemix.trainer.optimization import clip_grad_norm_, lr_factor


@pytest.fixture(scope="module")
def llm_dir(fixtures_dir):
    return str(fixtures_dir / "llm")


def batch(config, seed=0, length=12):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, size=(2, length))
    mask = np.ones_like(ids)
    ids[1, -3:] = config.pad_token_id  # right padding
    mask[1, -3:] = 0
    labels = ids.copy()
    labels[0, :4] = -100
    return paddle.to_tensor(ids), paddle.to_tensor(mask), paddle.to_tensor(labels)


def numpy_loss(logits, labels):
    logits, labels = logits[:, :-1].reshape(-1, logits.shape[-1]).astype(np.float64), labels[:, 1:].reshape(-1)
    keep = labels != -100
    z = logits[keep]
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    return float((lse - z[np.arange(len(z)), labels[keep]]).mean())


def test_loss_is_the_shifted_mean_cross_entropy(llm_dir):
    model = Emu3ForCausalLM.from_pretrained(llm_dir)
    ids, mask, labels = batch(model.config)
    logits = model(ids, attention_mask=mask).logits.numpy()
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.logits is None
    assert abs(float(out.loss) - numpy_loss(logits, labels.numpy())) < 2e-6
    hidden = paddle.to_tensor(np.random.default_rng(1).standard_normal((2, 9, 8)).astype("float32"))
    weight = paddle.to_tensor(np.random.default_rng(2).standard_normal((8, 30)).astype("float32"))
    lab = paddle.to_tensor(np.random.default_rng(3).integers(-1, 30, size=(2, 9)).clip(-1, None))
    lab = paddle.where(lab < 0, paddle.full_like(lab, -100), lab)
    expected = numpy_loss((hidden.numpy() @ weight.numpy()), lab.numpy())
    for rows in (1, 5, 16, 1024):  # chunking only changes the summation order
        assert abs(float(causal_lm_loss(hidden, weight, lab, chunk_rows=rows)) - expected) < 2e-6
    with pytest.raises(ValueError, match="labels must be -100 or token ids below"):
        model(ids, labels=paddle.full_like(ids, model.config.vocab_size))


def test_loss_gradients_match_numpy():
    """The chunked loss's gradients (formed in its forward) against softmax minus one-hot in float64, ignored rows
    and the mean's denominator included, for chunks that do and do not divide the rows."""
    rng = np.random.default_rng(4)
    h, w = rng.standard_normal((2, 9, 8)).astype("float32"), rng.standard_normal((8, 30)).astype("float32")
    lab = rng.integers(0, 30, size=(2, 9))
    lab[0, 2:5] = -100
    rows, targets = h[:, :-1].reshape(-1, 8).astype(np.float64), lab[:, 1:].reshape(-1)
    keep = targets != -100
    p = np.exp(rows @ w - (rows @ w).max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[np.arange(len(targets)), np.where(keep, targets, 0)] -= 1
    p *= keep[:, None] / keep.sum()
    dh = np.zeros_like(h, dtype=np.float64)
    dh[:, :-1] = (p @ w.T).reshape(2, 8, 8)
    for chunk in (3, 1024):
        hidden, weight = paddle.to_tensor(h, stop_gradient=False), paddle.to_tensor(w, stop_gradient=False)
        causal_lm_loss(hidden, weight, paddle.to_tensor(lab), chunk_rows=chunk).backward()
        np.testing.assert_allclose(hidden.grad.numpy(), dh, rtol=0, atol=1e-6)
        np.testing.assert_allclose(weight.grad.numpy(), rows.T @ p, rtol=0, atol=1e-6)


def test_dropout_only_in_training(llm_dir):
    ids, mask, labels = batch(Emu3ForCausalLM.from_pretrained(llm_dir).config)
    plain = float(Emu3ForCausalLM.from_pretrained(llm_dir, attention_dropout=0.0)(ids, mask, labels=labels).loss)
    model = Emu3ForCausalLM.from_pretrained(llm_dir, attention_dropout=0.5)
    assert float(model(ids, mask, labels=labels).loss) == plain  # eval mode: no dropout
    model.train()
    losses = []
    for seed in (1, 1, 2):
        paddle.seed(seed)
        losses.append(float(model(ids, mask, labels=labels).loss))
    assert losses[0] == losses[1] != losses[2] and losses[0] != plain
    # rate 1 zeroes the embeddings and both residual branches: the logits are all 0, the loss is log(vocab)
    model = Emu3ForCausalLM.from_pretrained(llm_dir, attention_dropout=1.0)
    model.train()
    assert abs(float(model(ids, mask, labels=labels).loss) - math.log(model.config.vocab_size)) < 1e-5


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_recompute_gives_the_same_loss_and_gradients(llm_dir, dropout):
    """Per-layer recompute replays the dropout masks (the attention's keep masks too): loss and every gradient equal
    those of the run that keeps the activations, with and without dropout."""
    results = []
    for checkpointing in (False, True):
        model = Emu3ForCausalLM.from_pretrained(llm_dir, attention_dropout=dropout)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        ids, mask, labels = batch(model.config)
        paddle.seed(7)
        loss = model(ids, mask, labels=labels).loss
        loss.backward()
        results.append((float(loss), {n: p.grad.numpy() for n, p in model.named_parameters()}))
    assert abs(results[0][0] - results[1][0]) < 1e-6
    for name, grad in results[0][1].items():
        np.testing.assert_allclose(results[1][1][name], grad, rtol=0, atol=1e-6, err_msg=name)


def test_pad_row_gets_no_gradient(llm_dir):
    """As the original's nn.Embedding(padding_idx=pad): pad tokens in the input never move the pad row."""
    model = Emu3ForCausalLM.from_pretrained(llm_dir)
    model.train()
    ids, mask, labels = batch(model.config)
    model(ids, mask, labels=labels).loss.backward()
    grad = model.model.embed_tokens.weight.grad.numpy()
    assert not grad[model.config.pad_token_id].any()
    assert grad[int(ids[0, 0])].any()


def test_schedules():
    # warmup 2 of 10 steps
    assert [lr_factor(s, 10, "linear", 2) for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    assert lr_factor(6, 10, "cosine", 2) == pytest.approx(0.5, abs=1e-15)
    assert lr_factor(10, 10, "cosine", 2) == pytest.approx(0.0, abs=1e-15)
    assert lr_factor(10, 10, "cosine_with_min_lr", 2, min_lr_rate=0.1) == pytest.approx(0.1, abs=1e-15)
    assert lr_factor(0, 10, "constant", 2) == 1.0  # transformers' "constant" has no warmup
    assert lr_factor(1, 10, "constant_with_warmup", 2) == 0.5
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        lr_factor(0, 10, "exponential")


def test_clip_grad_norm_is_torchs():
    a = paddle.create_parameter([2], "float32")
    b = paddle.create_parameter([1], "float32")
    a.grad = paddle.to_tensor([3.0, 4.0])
    b.grad = paddle.to_tensor([12.0])
    total = clip_grad_norm_([a, b], 1.0)
    coef = np.float32(1.0) / (np.float32(13.0) + np.float32(1e-6))
    assert float(total) == 13.0
    np.testing.assert_allclose(a.grad.numpy(), np.float32([3, 4]) * coef, rtol=1e-7)
    np.testing.assert_allclose(b.grad.numpy(), np.float32([12]) * coef, rtol=1e-7)
    a.grad, b.grad = paddle.to_tensor([0.3, 0.4]), paddle.to_tensor([0.0])
    assert float(clip_grad_norm_([a, b], 1.0)) == pytest.approx(0.5)
    np.testing.assert_array_equal(a.grad.numpy(), np.float32([0.3, 0.4]))  # below the limit: unchanged
