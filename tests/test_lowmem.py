"""Low-memory weights (paddlemix/models/quantization.py): bf16 storage on CPU and weight-only int8.

Kernels against the numpy references of tests/op_reference.py (the extension's and the fallback's), the per-channel
quantization error bound, bf16 storage against the float32 model of the same bf16 file, the int8 model on the public
fixtures against the original's references, and the save / load round trip of a quantized folder.
"""

import json

import numpy as np
import paddle
import pytest

import paddlemix.ops as ops
from op_reference import F32, bf16_bits, np_decoder_step, np_linear_stored, np_widen
from paddlemix.models import quantization
from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM
from paddlemix.models.safetensors_io import SafetensorsFile, save_file
from paddlemix.ops import fallback
from test_ops import _step_inputs, ext_only, require_extension, t  # noqa: F401 (ext_only is a fixture)

INT8 = "weight_only_int8"


def _cpu_has_avx512():
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512f" in flags and "avx512bw" in flags


@pytest.fixture(params=["avx512", "avx2"])
def isa(request, monkeypatch):
    """The instruction set of the kernels' bf16 / int8 products, read by the op at every call: the portable AVX2
    path (PADDLEMIX_OPS_AVX512=0) or AVX-512 (=1) on a CPU that has it (unset: int8 AVX-512, bf16 AVX2)."""
    if request.param == "avx512" and not _cpu_has_avx512():
        pytest.skip("this CPU has no AVX-512 F + BW")
    monkeypatch.setenv("PADDLEMIX_OPS_AVX512", "1" if request.param == "avx512" else "0")
    return request.param


def stored(w, kind):
    """A float32 weight as a (paddle weight, paddle scale or None, numpy stored weight, numpy scale or None)."""
    if kind == "bfloat16":
        bits = bf16_bits(w)
        return paddle.to_tensor(bits).view(paddle.bfloat16), None, bits, None
    if kind == "int8":
        q, s = quantization.quantize_rows(w.T)  # one scale per output column of the [in, out] weight
        q = np.ascontiguousarray(q.T)
        return paddle.to_tensor(q), paddle.to_tensor(s), q, s
    return paddle.to_tensor(w), None, w, None


# ----------------------------------------------------------------------------------------------- quantization
def test_quantize_rows_error_bound():
    """Symmetric per-row int8: scale = max|w| / 127, |w - q * scale| <= scale / 2 for every element (float32
    rounding of w / scale adds at most a few ulp), |q| <= 127 with 127 reached in every non-zero row, a zero row
    stays zero."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((37, 301)) * rng.uniform(1e-3, 10, (37, 1))).astype(F32)
    w[5] = 0.0
    w[6, 7] = -50.0  # one outlier: its row's scale is large, the rest of the row coarse
    q, s = quantization.quantize_rows(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and q.shape == w.shape and s.shape == (37,)
    np.testing.assert_allclose(s, np.abs(w).max(axis=1) / 127, rtol=1e-6)
    err = np.abs(w.astype(np.float64) - q.astype(np.float64) * s[:, None])
    assert (err <= s[:, None] / 2 * (1 + 1e-5)).all()
    assert np.abs(q.astype(np.int32)).max() <= 127
    assert (np.abs(q.astype(np.int32)).max(axis=1)[np.arange(37) != 5] == 127).all()
    assert (q[5] == 0).all() and s[5] == 0


# ----------------------------------------------------------------------------------------------- linear kernels
# the last case's rows are long enough for column panels (several whole ones and a partial one, n % 16 != 0)
STORED_CASES = [((1,), 512, 128), ((2,), 513, 1003), ((3,), 7, 5), ((1, 5), 129, 9), ((16,), 515, 1001),
                ((2,), 67, 9237)]


def _linear_case(lead, k, n, kind, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, k)).astype(F32)
    w = (rng.standard_normal((k, n)) * rng.uniform(0.1, 2, n)).astype(F32)
    return x, *stored(w, kind)


@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
@pytest.mark.parametrize("lead,k,n", STORED_CASES)
def test_stored_linear_fallback_matches_numpy(lead, k, n, kind, monkeypatch):
    """The fallback widens blocks of columns (here several blocks, the last one partial) before Paddle's matmul."""
    monkeypatch.setattr(fallback, "WIDEN_BLOCK", 3 * k)
    x, w, s, w_np, s_np = _linear_case(lead, k, n, kind, 0)
    got = fallback.linear(t(x), w, s).numpy()
    assert got.shape == (*lead, n)
    np.testing.assert_allclose(got, np_linear_stored(x, w_np, s_np), rtol=1e-5, atol=2e-5 * np.sqrt(k) * 2)


@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
@pytest.mark.parametrize("lead,k,n", STORED_CASES)
def test_stored_linear_extension(lead, k, n, kind, ext_only, isa):
    x, w, s, w_np, s_np = _linear_case(lead, k, n, kind, 1)
    with paddle.no_grad():
        got = ops.linear(t(x), w, s).numpy()
    np.testing.assert_allclose(got, np_linear_stored(x, w_np, s_np), rtol=1e-5, atol=2e-5 * np.sqrt(k) * 2)


def test_stored_linear_rejects_a_missing_or_stray_scale():
    x = paddle.zeros([1, 8])
    with pytest.raises(ValueError, match="int8 weight needs a scale"):
        ops.linear(x, paddle.zeros([8, 4], "int8"))
    with pytest.raises(ValueError, match="int8 weight needs a scale"):
        ops.linear(x, paddle.zeros([8, 4]), paddle.ones([4]))
    with pytest.raises(ValueError, match="int8 weight needs a scale"):
        ops.linear(x, paddle.zeros([8, 4], "int8"), paddle.ones([5]))


@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
@pytest.mark.parametrize("case", [(3, 36, 6, 3, 6, 50, 11, 10, "padded", 2), (2, 256, 8, 8, 32, 704, 300, 257,
                                                                               "padded", 3)])
def test_decoder_step_with_stored_weights(case, kind, ext_only, isa):
    """decoder_step on bf16 / int8 projections equals the numpy layer on the widened (and scaled) weights."""
    x, weights, keys, values, slot, pos, inv_freq, mask = _step_inputs(*case)
    args, scales, dense = [], [], []
    for i, w in enumerate(weights):
        if i in (0, 5):
            args.append(t(w))
            dense.append(w)
            continue
        w_t, s_t, w_np, s_np = stored(w, kind)
        args.append(w_t)
        dense.append((np_widen(w_np) * (1.0 if s_np is None else s_np.astype(np.float64))).astype(F32))
        if s_t is not None:
            scales.append(s_t)
    want_y, want_keys, _ = np_decoder_step(x, dense, keys, values, slot, pos, inv_freq, mask, 1e-6)
    keys_t = t(keys)
    with paddle.no_grad():
        y = ops.decoder_step(t(x[:, None]), args + scales, [keys_t], [t(values)], slot, t(pos[:, None]),
                             t(inv_freq), t(mask), 1e-6)
    np.testing.assert_allclose(y.numpy()[:, 0], want_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(keys_t.numpy()[:, :, slot], want_keys[:, :, slot], rtol=1e-4, atol=1e-4)


def test_decoder_step_rejects_int8_without_scales(ext_only):
    x, weights, keys, values, slot, pos, inv_freq, mask = _step_inputs(1, 64, 4, 2, 16, 96, 40, 0, "broadcast", 0)
    args = [t(w) if i in (0, 5) else stored(w, "int8")[0] for i, w in enumerate(weights)]
    with paddle.no_grad(), pytest.raises(Exception, match="7 scales"):
        ops.decoder_step(t(x[:, None]), args, [t(keys)], [t(values)], slot, t(pos[:, None]), t(inv_freq), t(mask),
                         1e-6)


# ----------------------------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def bf16_llm(fixtures_dir, tmp_path_factory):
    """The fixture LM written as a bf16 checkpoint (each float32 weight truncated to bf16)."""
    src = SafetensorsFile(str(fixtures_dir / "llm" / "model.safetensors"))
    try:
        tensors = {k: bf16_bits(np.asarray(src.get(k))) for k in src.keys()}
    finally:
        src.close()
    out = tmp_path_factory.mktemp("bf16_llm")
    save_file(tensors, str(out / "model.safetensors"), {"format": "pt"}, set(tensors))
    (out / "config.json").write_text((fixtures_dir / "llm" / "config.json").read_text())
    return out


def _logits(model, ref):
    with paddle.no_grad():
        return model(ref["input_ids"], attention_mask=ref["attention_mask"]).logits.numpy()


def test_bf16_storage_is_exact(bf16_llm, fixtures_dir):
    """bf16 file -> bf16 weights (compute float32) gives the logits of the float32 model of the same file: the
    widening is exact, only the summation order may differ (<= 1e-4). Without the extension the weights load as
    float32 (the kernels that read bf16 are the extension's)."""
    ref = np.load(fixtures_dir / "refs" / "llm_forward_U_batch.npz")
    f32 = Emu3ForCausalLM.from_pretrained(str(bf16_llm))
    bf16 = Emu3ForCausalLM.from_pretrained(str(bf16_llm), dtype="bfloat16")
    linear_dtype = bf16.model.layers[0].mlp.down_proj.weight.dtype
    if ops.extension() is None:
        assert linear_dtype == paddle.float32
    else:
        assert linear_dtype == bf16.lm_head.weight.dtype == bf16.model.embed_tokens.weight.dtype == paddle.bfloat16
    assert bf16.dtype == paddle.float32 and bf16.model.norm.weight.dtype == paddle.float32
    np.testing.assert_allclose(_logits(bf16, ref), _logits(f32, ref), rtol=0, atol=1e-4)
    ids = ref["input_ids"][:1, :20]
    with paddle.no_grad():
        got = bf16.generate(ids, max_new_tokens=6, progress=False).numpy()
        want = f32.generate(ids, max_new_tokens=6, progress=False).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def int8_llm(fixtures_dir):
    return Emu3ForCausalLM.from_pretrained(str(fixtures_dir / "llm"), quant_type=INT8)


# Bound on the int8 model's logits error, as a fraction of each position's logit range. Derivation: a weight's
# rounding error is at most scale / 2 = max|w_row| / 254 and, for weights that are not on the grid, behaves as
# uniform noise of rms scale / sqrt(12) = max|w_row| / 440. For a row of n Gaussian weights (n = 64 .. 787 here)
# max|w_row| is about 2.9 sigma, so every product's output carries an independent relative rms error of about
# 2.9 / 440 = 0.7 %. The fixture LM's logits come out of 2 layers x 7 products and the lm_head: about sqrt(15) x
# 0.7 % = 2.6 % of the logits' rms (which is about a sixth of their range, for ~800 near-Gaussian logits), i.e. 0.4 %
# of the range in rms, and the largest of ~10^5 entries is about 4.5 rms: 2 % of the range. Measured on the public
# fixtures: 1.1-1.2 % over all positions, 0.5-0.7 % at the last position.
INT8_LOGITS_BOUND = 0.02


def test_int8_logits_within_the_derived_bound(int8_llm, fixtures_dir):
    """On every llm_forward reference: the int8 model's logits differ from the float32 model's by at most
    INT8_LOGITS_BOUND of the logit range, at the last position and over all non-padded positions; the float32
    model itself matches the original's logits."""
    f32 = Emu3ForCausalLM.from_pretrained(str(fixtures_dir / "llm"))
    for path in sorted((fixtures_dir / "refs").glob("llm_forward_*.npz")):
        ref = np.load(path)
        want, got = _logits(f32, ref), _logits(int8_llm, ref)
        np.testing.assert_allclose(want[:, -1], ref["last_logits"], atol=1e-4, err_msg=path.name)
        keep = ref["attention_mask"].astype(bool)
        span = want.max(-1) - want.min(-1)
        assert (np.abs(got - want).max(-1)[keep] <= INT8_LOGITS_BOUND * span[keep]).all(), path.name
        assert (np.abs(got - want)[:, -1].max(-1) <= INT8_LOGITS_BOUND * span[:, -1]).all(), path.name


def _agreement(fixtures_dir, model, pattern, flip_factor):
    """Per reference row: (greedy tokens agreeing with the original's, tokens, steps whose token the bound
    guarantees, steps of those that agree). A step's choice can only change if the error of the score difference
    between the reference's top-2 tokens reaches its margin (``step_margins``): flip_factor x the logits error bound
    (2 for plain log-softmax scores: each of the two logits moves by at most the bound, the log-sum-exp cancels; 10
    with guidance 3: 3 x 2 for the conditional and 2 x 2 for the unconditional scores). So every step whose earlier
    tokens all agreed and whose margin exceeds that must give the reference's token."""
    rows = []
    for path in sorted((fixtures_dir / "refs").glob(pattern)):
        ref = np.load(path)
        kw = {"attention_mask": ref["attention_mask"], "progress": False}
        if "neg_input_ids" in ref:
            kw.update(negative_prompt_ids=ref["neg_input_ids"], guidance_scale=3.0, image_size=ref["image_size"])
        else:
            kw["max_new_tokens"] = ref["new_tokens"].shape[1]
        out = model.generate(ref["input_ids"], **kw).numpy()[:, ref["input_ids"].shape[1]:]
        new, margins = ref["new_tokens"], ref["step_margins"]
        last = _logits(model, {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]})[:, -1]
        bound = INT8_LOGITS_BOUND * (last.max(-1) - last.min(-1))
        for b in range(new.shape[0]):
            got = out[b, : new.shape[1]]
            same = got == new[b, : len(got)]
            prefix_same = np.concatenate([[True], np.cumprod(same)[:-1].astype(bool)])
            guaranteed = prefix_same & (margins[: len(got), b] > flip_factor * bound[b])
            rows.append((int(same.sum()), new.shape[1], int(guaranteed.sum()), int((same & guaranteed).sum())))
    return rows


def test_int8_greedy_tokens_agree_with_the_original(int8_llm, fixtures_dir):
    """Greedy text-to-image (guidance 3) and VQA with int8 weights against the original's references: every token
    the logits bound guarantees agrees (see _agreement). Measured on the public fixtures: t2i 69 / 69 tokens agree
    (35 of them guaranteed by the bound), VQA 37 / 48 (16 guaranteed; one row of gen_vqa_batch takes another token
    at its 6th step, where the reference's top-2 margin is below the bound, and continues differently)."""
    for pattern, factor in (("gen_t2i_*.npz", 10), ("gen_vqa_*.npz", 2)):
        rows = _agreement(fixtures_dir, int8_llm, pattern, factor)
        for agree, total, guaranteed, guaranteed_agree in rows:
            assert guaranteed_agree == guaranteed, (pattern, rows)
        assert sum(row[2] for row in rows) > 0, (pattern, rows)  # the bound does guarantee some steps


def test_int8_fused_decode_equals_the_unfused_layers(int8_llm, fixtures_dir, monkeypatch):
    """The int8 model's cached decode steps run in ops.decoder_step (one call over all layers, with the scales) and
    equal the layer code (ops.linear per projection)."""
    require_extension()
    ref = np.load(fixtures_dir / "refs" / "llm_forward_U_batch.npz")
    ids, mask = ref["input_ids"], ref["attention_mask"]
    calls = []
    fused_step = ops.decoder_step
    monkeypatch.setattr(ops, "decoder_step", lambda *a: calls.append(len(a[1])) or fused_step(*a))

    def decode(fused):
        monkeypatch.setattr(ops, "decoder_step_available", lambda x: fused)
        with paddle.no_grad():
            out = int8_llm(ids[:, :-2], attention_mask=mask[:, :-2], use_cache=True)
            logits = []
            for i in range(ids.shape[1] - 2, ids.shape[1]):
                out = int8_llm(ids[:, i:i + 1], attention_mask=mask[:, :i + 1], past_key_values=out.past_key_values,
                               use_cache=True)
                logits.append(out.logits.numpy())
        return np.concatenate(logits, axis=1)

    got = decode(True)
    assert calls == [16 * int8_llm.config.num_hidden_layers] * 2
    np.testing.assert_allclose(got, decode(False), rtol=1e-4, atol=1e-4)


def test_int8_save_and_load_round_trip(int8_llm, tmp_path, monkeypatch):
    """save_pretrained writes <name>.quant_weight (int8, [out, in]) and <name>.quant_scale (float32 [out]) and
    quantization_config; loading it back gives the same int8 weights and scales without quantizing again."""
    int8_llm.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"] == {"quant_type": INT8}
    st = SafetensorsFile(str(tmp_path / "model.safetensors"))
    try:
        key = "model.layers.0.mlp.gate_proj"
        assert st.dtype(key + ".quant_weight") == "I8" and st.dtype(key + ".quant_scale") == "F32"
        cfg = int8_llm.config
        assert st.shape(key + ".quant_weight") == [cfg.intermediate_size, cfg.hidden_size]
        assert key + ".weight" not in st.keys() and "model.embed_tokens.weight" in st.keys()
    finally:
        st.close()
    monkeypatch.setattr(quantization, "quantize_rows", None)  # calling it would fail
    back = Emu3ForCausalLM.from_pretrained(str(tmp_path))
    assert isinstance(back.lm_head, quantization.WeightOnlyInt8Linear)
    want = int8_llm.state_dict()
    for name, value in back.state_dict().items():
        assert value.dtype == want[name].dtype, name
        np.testing.assert_array_equal(value.numpy() if value.dtype != paddle.bfloat16 else
                                      value.astype("float32").numpy(),
                                      want[name].numpy() if value.dtype != paddle.bfloat16 else
                                      want[name].astype("float32").numpy(), err_msg=name)


def test_bad_quant_types(fixtures_dir, tmp_path, int8_llm):
    from paddlemix.models.emu3.modeling_emu3visionvq import Emu3VisionVQModel

    with pytest.raises(ValueError, match="unsupported quant_type"):
        Emu3ForCausalLM.from_pretrained(str(fixtures_dir / "llm"), quant_type="int3")
    with pytest.raises(ValueError, match="does not support quant_type"):
        Emu3VisionVQModel.from_pretrained(str(fixtures_dir / "vision_tokenizer"), quant_type=INT8)
    int8_llm.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_type": "weight_only_int2"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported quant_type"):
        Emu3ForCausalLM.from_pretrained(str(tmp_path))


def test_training_labels_need_float_weights(int8_llm, fixtures_dir):
    ref = np.load(fixtures_dir / "refs" / "llm_forward_U_single.npz")
    with pytest.raises(ValueError, match="labels .training. need weights in the compute dtype"):
        int8_llm(ref["input_ids"], labels=ref["input_ids"])
