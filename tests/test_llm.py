"""Emu3Config and Emu3ForCausalLM against the original's forward references (llm_forward_*.npz) and by construction."""

import json
import os

import numpy as np
import paddle
import pytest

from paddlemix import ops
from paddlemix.models.emu3.configuration_emu3 import Emu3Config
from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM, Emu3KVCache, rope_inv_freq
from paddlemix.models.safetensors_io import SafetensorsFile

ATOL = 1e-4


def extension_expected():
    """CI's first run builds the extension: there the inference path must really run the compiled kernels."""
    return os.environ.get("CI", "").lower() == "true" and os.environ.get("PADDLEMIX_DISABLE_EXT_OPS", "0") in ("", "0")


# the test ids say which kernels the inference path runs here: "inference-compiled" or "inference-fallback"
INFERENCE_ID = "inference-" + ("compiled" if ops.extension() is not None else "fallback")


@pytest.fixture(params=["inference", "autograd"], ids=[INFERENCE_ID, "autograd"])
def path(request, monkeypatch):
    """How the forward runs. "inference": as generate and the scripts run it (eval mode, paddle.no_grad()), which
    takes the compiled CPU kernels where the extension is built (ops.linear's kernel too, forced on for the small
    fixture weights; one-token steps with a cache take ops.decoder_step), else the fallback. "autograd": gradients
    recorded, so every op takes its pure-Paddle fallback. Yields what ran: "compiled", "fallback" or "autograd"."""
    probe = paddle.zeros([1, 1, 4], "float32")
    if request.param == "autograd":
        assert paddle.is_grad_enabled() and not ops.decoder_step_available(probe)
        yield "autograd"
        return
    monkeypatch.setattr(ops, "LINEAR_MIN_WEIGHTS", 0)
    with paddle.no_grad():
        compiled = ops.extension() is not None
        assert ops.decoder_step_available(probe) == compiled
        assert compiled or not extension_expected(), "CI built the extension, but it is not loaded"
        yield "compiled" if compiled else "fallback"


@pytest.fixture(scope="module")
def llm_dir(fixtures_dir):
    return fixtures_dir / "llm"


@pytest.fixture(scope="module")
def model(llm_dir):
    return Emu3ForCausalLM.from_pretrained(str(llm_dir))


def forward_cases(fixtures_dir):
    files = sorted((fixtures_dir / "refs").glob("llm_forward_*.npz"))
    assert files, f"no llm_forward_*.npz in {fixtures_dir / 'refs'}"
    return [(f.stem, np.load(f)) for f in files]


def _max_diff(a, b, valid):
    return float(np.abs(np.asarray(a) - np.asarray(b))[valid].max())


def test_forward_matches_original(model, fixtures_dir, path):
    for name, ref in forward_cases(fixtures_dir):
        valid = ref["attention_mask"].astype(bool)
        out = model(ref["input_ids"], attention_mask=ref["attention_mask"], output_hidden_states=True)
        logits = out.logits.numpy()
        assert logits.dtype == np.float32 and logits.shape == ref["input_ids"].shape + (model.config.vocab_size,)
        assert np.abs(logits[:, -1] - ref["last_logits"]).max() < ATOL, name
        assert _max_diff(out.hidden_states[-1].numpy(), ref["final_norm_hidden"], valid) < ATOL, name
        if "logits" in ref.files:
            assert _max_diff(logits, ref["logits"], valid) < ATOL, name
        if "hidden_states" in ref.files:
            hs = np.stack([h.numpy() for h in out.hidden_states])
            assert hs.shape == ref["hidden_states"].shape, name
            assert _max_diff(hs, ref["hidden_states"], (slice(None),) + (valid,)) < ATOL, name


def test_forward_generation_positions(model, fixtures_dir, path):
    cases = [(n, r) for n, r in forward_cases(fixtures_dir) if "position_ids_generate" in r.files]
    assert cases, "no left-padded forward case with position_ids_generate"
    for name, ref in cases:
        valid = ref["attention_mask"].astype(bool)
        mask = ref["attention_mask"]
        # the position ids generation derives from the mask: cumsum - 1, pads 1
        derived = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
        np.testing.assert_array_equal(derived, ref["position_ids_generate"])
        out = model(ref["input_ids"], attention_mask=mask, position_ids=ref["position_ids_generate"],
                    output_hidden_states=True)
        assert np.abs(out.logits.numpy()[:, -1] - ref["last_logits_genpos"]).max() < ATOL, name
        assert _max_diff(out.logits.numpy(), ref["logits_genpos"], valid) < ATOL, name
        assert _max_diff(out.hidden_states[-1].numpy(), ref["final_norm_hidden_genpos"], valid) < ATOL, name


def test_kv_cache_forward_matches_original(model, fixtures_dir, path):
    """A prefill then one token per call on the cache (ops.decoder_step on the inference path) gives the original's
    logits at every position."""
    name, ref = [c for c in forward_cases(fixtures_dir) if "position_ids_generate" in c[1].files][0]
    ids, mask = ref["input_ids"], ref["attention_mask"]
    pos = ref["position_ids_generate"]
    split = ids.shape[1] - 4
    out = model(ids[:, :split], attention_mask=mask[:, :split], position_ids=pos[:, :split], use_cache=True)
    cache = out.past_key_values
    assert isinstance(cache, Emu3KVCache) and cache.length == split
    pieces = [out.logits.numpy()]
    for t in range(split, ids.shape[1]):  # one token at a time, the cache grows past its first capacity
        out = model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=pos[:, t:t + 1],
                    past_key_values=cache, use_cache=True)
        pieces.append(out.logits.numpy())
    assert cache.length == ids.shape[1]
    assert _max_diff(np.concatenate(pieces, axis=1), ref["logits_genpos"], mask.astype(bool)) < ATOL, name


def test_default_positions_follow_the_cache(model, fixtures_dir):
    """Without position_ids, a call on a cache continues at the cached length: the original's full logits."""
    name, ref = [(n, r) for n, r in forward_cases(fixtures_dir) if "logits" in r.files and r["attention_mask"].all()][0]
    ids = ref["input_ids"]
    first = model(ids[:, :-3], use_cache=True)
    rest = model(ids[:, -3:], past_key_values=first.past_key_values, use_cache=True)
    assert np.abs(rest.logits.numpy() - ref["logits"][:, -3:]).max() < ATOL, name


def test_gqa_head_grouping_matches_numpy(model):
    """One layer's attention recomputed in numpy: query head i uses KV head i // (heads / kv_heads)."""
    cfg = model.config
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 6, cfg.hidden_size)).astype(np.float32)
    attn = model.model.layers[0].self_attn
    pos = np.arange(6)[None]
    got = attn(paddle.to_tensor(x), paddle.to_tensor(pos), model.model.inv_freq(6), None, None).numpy()

    def proj(layer, n):
        return (x @ layer.weight.numpy()).reshape(1, 6, n, cfg.head_dim)

    q, k, v = proj(attn.q_proj, cfg.num_attention_heads), proj(attn.k_proj, cfg.num_key_value_heads), proj(
        attn.v_proj, cfg.num_key_value_heads)
    inv = rope_inv_freq(cfg, 6).astype(np.float64)
    ang = np.concatenate([pos[0][:, None] * inv] * 2, axis=1)[None, :, None]

    def rot(t):
        half = t.shape[-1] // 2
        return t * np.cos(ang) + np.concatenate([-t[..., half:], t[..., :half]], -1) * np.sin(ang)

    q, k = rot(q), rot(k)
    g = cfg.num_attention_heads // cfg.num_key_value_heads
    out = np.zeros_like(q)
    for i in range(cfg.num_attention_heads):
        s = q[0, :, i] @ k[0, :, i // g].T / np.sqrt(cfg.head_dim)
        s = np.where(np.tril(np.ones((6, 6), bool)), s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[0, :, i] = (p / p.sum(-1, keepdims=True)) @ v[0, :, i // g]
    ref = out.reshape(1, 6, -1) @ attn.o_proj.weight.numpy()
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_rope_scaling(llm_dir, model, fixtures_dir):
    _, ref = forward_cases(fixtures_dir)[0]
    ids = ref["input_ids"][:1]
    L = ids.shape[1]
    cfg = json.loads((llm_dir / "config.json").read_text())
    linear = Emu3ForCausalLM.from_pretrained(str(llm_dir), rope_scaling={"type": "linear", "factor": 2.0})
    # linear scaling divides positions by the factor: positions 2p scaled equal positions p unscaled
    scaled = linear(ids, position_ids=2 * np.arange(L)[None]).logits.numpy()
    np.testing.assert_allclose(scaled, model(ids).logits.numpy(), atol=1e-4)
    # dynamic NTK: unchanged up to max_position_embeddings, a larger base beyond it
    dyn = Emu3Config.from_dict(dict(cfg, rope_scaling={"type": "dynamic", "factor": 4.0}))
    m = dyn.max_position_embeddings
    np.testing.assert_array_equal(rope_inv_freq(dyn, m), rope_inv_freq(model.config, m))
    d = dyn.head_dim
    base = dyn.rope_theta * ((4.0 * (2 * m) / m) - 3.0) ** (d / (d - 2))
    np.testing.assert_allclose(rope_inv_freq(dyn, 2 * m), 1.0 / base ** (np.arange(0, d, 2) / d), rtol=1e-5)


def test_config_defaults_and_validation(llm_dir):
    c = Emu3Config()
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (184622, 4096, 14336, 32)
    assert (c.num_attention_heads, c.num_key_value_heads, c.max_position_embeddings) == (32, 8, 9216)
    assert (c.pad_token_id, c.bos_token_id, c.eos_token_id, c.img_token_id) == (151643, 151849, 151850, 151851)
    assert (c.boi_token_id, c.eoi_token_id, c.eol_token_id, c.eof_token_id) == (151852, 151853, 151846, 151847)
    assert c.rope_theta == 1e6 and c.rope_scaling is None and c.image_area == 518400 and not c.tie_word_embeddings
    assert c.model_type == "Emu3" and c.attention_dropout == 0.1 and c.rms_norm_eps == 1e-5
    on_disk = json.loads((llm_dir / "config.json").read_text())
    for bad, msg in [
        (dict(num_attention_heads=6), "divisible"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(rope_scaling={"type": "yarn", "factor": 2.0}), "rope_scaling"),
        (dict(rope_scaling={"type": "linear", "factor": 1}), "factor"),
        (dict(eos_token_id=200000), "eos_token_id"),
        (dict(hidden_act="tanh"), "hidden_act"),
    ]:
        with pytest.raises(ValueError, match=msg):
            Emu3Config(**bad)
    with pytest.raises(ValueError, match="does not know"):
        Emu3Config.from_dict(dict(on_disk, not_a_field=1))


def test_save_load_round_trip(model, tmp_path, fixtures_dir):
    model.save_pretrained(str(tmp_path))
    with SafetensorsFile(str(tmp_path / "model.safetensors")) as st:
        keys = set(st.keys())
    with SafetensorsFile(str(fixtures_dir / "llm" / "model.safetensors")) as st:
        assert keys == set(st.keys())
        np.testing.assert_array_equal(
            SafetensorsFile(str(tmp_path / "model.safetensors")).get("model.layers.0.self_attn.q_proj.weight"),
            st.get("model.layers.0.self_attn.q_proj.weight"),
        )
    again = Emu3ForCausalLM.from_pretrained(str(tmp_path))
    assert again.config == model.config
    ids = np.arange(10)[None] % model.config.vocab_size
    np.testing.assert_array_equal(again(ids).logits.numpy(), model(ids).logits.numpy())


def test_forward_bad_inputs(model):
    with pytest.raises(ValueError, match="non-empty"):
        model(np.zeros((1, 0), np.int64))
    with pytest.raises(ValueError, match="attention_mask"):
        model(np.zeros((1, 4), np.int64), attention_mask=np.ones((1, 5), np.int64))
    with pytest.raises(ValueError, match="position_ids"):
        model(np.zeros((1, 4), np.int64), position_ids=np.zeros((1, 3), np.int64))
    with pytest.raises(ValueError, match="past_key_values"):
        model(np.zeros((1, 4), np.int64), past_key_values=(1, 2))


def test_long_prefill_in_query_blocks_equals_one_block(model, fixtures_dir, monkeypatch):
    import paddlemix.models.emu3.modeling_emu3 as modeling

    _, ref = [c for c in forward_cases(fixtures_dir) if "position_ids_generate" in c[1].files][0]
    ids, mask = ref["input_ids"], ref["attention_mask"]
    monkeypatch.setattr(modeling, "QUERY_BLOCK", 7)
    blocks = model(ids, attention_mask=mask).logits.numpy()
    unmasked = model(ids[:1]).logits.numpy()
    monkeypatch.undo()
    assert _max_diff(blocks, ref["logits"], mask.astype(bool)) < ATOL
    np.testing.assert_allclose(unmasked, model(ids[:1]).logits.numpy(), atol=1e-5)


def test_hf_config_rope_parameters(llm_dir):
    """transformers 5.x keeps RoPE in rope_parameters: theta and scaling are read from there, never defaulted
    (the converted fixture folder, test_hf_checkpoint.py, has only the default rope type). transformers 4.x wrote
    rope_theta plus rope_scaling {"rope_type": "default"}, which means no scaling."""
    cfg = json.loads((llm_dir / "config.json").read_text())
    cfg.pop("rope_theta")
    cfg.pop("rope_scaling")
    text = dict(cfg, model_type="emu3_text_model",
                rope_parameters={"rope_theta": 5000.0, "rope_type": "linear", "factor": 2.0})
    for layout in (text, {"model_type": "emu3", "text_config": text, "vocabulary_map": {}}):
        config = Emu3Config.from_dict(layout)
        assert config.rope_theta == 5000.0
        assert config.rope_scaling == {"type": "linear", "factor": 2.0}
    v4 = dict(cfg, model_type="emu3_text_model", rope_theta=5000.0, rope_scaling={"rope_type": "default"})
    config = Emu3Config.from_dict({"model_type": "emu3", "text_config": v4, "vocabulary_map": {}})
    assert config.rope_theta == 5000.0 and config.rope_scaling is None
