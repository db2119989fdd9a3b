"""Emu3 generation: the original's greedy text-to-image and VQA tokens (gen_*.npz), an independent step-by-step
reference of the batched guidance design, the grid rule, sampling, bad inputs and the example script."""

import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from paddlemix.models.emu3.generation_emu3 import allowed_table, grid_length
from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model(fixtures_dir):
    return Emu3ForCausalLM.from_pretrained(str(fixtures_dir / "llm"))


@pytest.fixture(scope="module")
def processor(fixtures_dir):
    from paddlemix.models.emu3.image_processing_emu3visionvq import Emu3VisionVQImageProcessor
    from paddlemix.models.emu3.modeling_emu3visionvq import Emu3VisionVQModel
    from paddlemix.models.emu3.processing_emu3 import Emu3Processor
    from paddlemix.models.emu3.tokenization_emu3 import Emu3Tokenizer

    vq_dir = str(fixtures_dir / "vision_tokenizer")
    return Emu3Processor(
        Emu3VisionVQImageProcessor.from_pretrained(vq_dir),
        Emu3VisionVQModel.from_pretrained(vq_dir),
        Emu3Tokenizer.from_pretrained(str(fixtures_dir / "tokenizer")),
    )


def _default_ops_id():
    """The test id of generate's default path, saying what it runs here (the extension may be absent or disabled)."""
    from paddlemix import ops

    return "compiled" if ops.extension() is not None else "default-is-fallback"


@pytest.fixture(params=["compiled", "fallback"], ids=[_default_ops_id(), "fallback"])
def ops_path(request, monkeypatch):
    """generate always runs under paddle.no_grad() in eval mode, as the scripts do: "compiled" is that path with the
    compiled CPU kernels where the extension is built (ops.decoder_step per step, ops.cfg_sample, ...); "fallback"
    hides the extension, so every op takes its pure-Paddle implementation. Returns what ran."""
    from paddlemix import ops

    compiled = request.param == "compiled" and ops.extension() is not None
    if request.param == "fallback":
        monkeypatch.setattr(ops, "_EXT", None)
    elif os.environ.get("CI", "").lower() == "true" and os.environ.get("PADDLEMIX_DISABLE_EXT_OPS", "0") in ("", "0"):
        assert compiled, "CI built the extension, but it is not loaded"
    with paddle.no_grad():
        assert ops.decoder_step_available(paddle.zeros([1, 1, 4], "float32")) == compiled
    return "compiled" if compiled else "fallback"


def load_refs(fixtures_dir, pattern):
    files = sorted((fixtures_dir / "refs").glob(pattern))
    assert files, f"no {pattern} in {fixtures_dir / 'refs'}"
    return [(f.stem, np.load(f)) for f in files]


def t2i(model, ref, **kwargs):
    return model.generate(
        ref["input_ids"], attention_mask=ref["attention_mask"], negative_prompt_ids=ref["neg_input_ids"],
        guidance_scale=3.0, image_size=ref["image_size"], progress=False, **kwargs,
    ).numpy()


# ------------------------------------------------------------------ an independent reference of the original loop
def original_rule(cfg, row_ids, height, width):
    """The allowed ids of the next token, written after the original prefix-constraint helper (Python sets)."""
    pos = int(np.flatnonzero(np.asarray(row_ids) == cfg.img_token_id)[0])
    offset = len(row_ids) - pos
    if offset % (width + 1) == 0:
        return {cfg.eol_token_id}
    if offset == (width + 1) * height + 1:
        return {cfg.eof_token_id}
    if offset == (width + 1) * height + 2:
        return {cfg.eoi_token_id}
    if offset == (width + 1) * height + 3:
        return {cfg.eos_token_id}
    if offset > (width + 1) * height + 3:
        return {cfg.pad_token_id}
    return set(range(cfg.eoi_token_id + 1, cfg.vocab_size))


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def reference_generate(model, ids, mask, neg_ids, neg_mask, scale, image_size, steps):
    """Greedy CFG decoding with SEPARATE full forwards (no cache) of the conditional and unconditional prompts, each
    row on its own, scores and the grid rule in numpy."""
    cfg = model.config
    out = []
    for b in range(ids.shape[0]):
        valid = mask[b].astype(bool)
        cond = list(ids[b])
        cmask = list(mask[b])
        uncond = list(neg_ids[b]) if neg_ids is not None else None
        umask = list(neg_mask[b]) if neg_mask is not None else [1] * len(uncond or [])
        row, finished = [], False
        for _ in range(steps):
            cm = np.asarray(cmask)[None]
            pos = np.where(cm == 1, np.cumsum(cm, 1) - 1, 1)
            scores = log_softmax(model(np.asarray(cond)[None], attention_mask=cm, position_ids=pos).logits.numpy()[0, -1])
            if uncond is not None:
                um = np.asarray(umask)[None]
                upos = np.where(um == 1, np.cumsum(um, 1) - 1, 1)
                u = log_softmax(model(np.asarray(uncond)[None], attention_mask=um, position_ids=upos).logits.numpy()[0, -1])
                scores = scale * (scores - u) + u
            if image_size is not None:
                h, w = image_size[b] if len(image_size) > 1 else image_size[0]
                allowed = original_rule(cfg, cond, int(h), int(w))
                keep = np.zeros_like(scores, bool)
                keep[list(allowed)] = True
                scores = np.where(keep, scores, -np.inf)
            tok = cfg.pad_token_id if finished else int(np.argmax(scores))
            finished = finished or tok == cfg.eos_token_id
            row.append(tok)
            cond.append(tok)
            cmask.append(1)
            if uncond is not None:
                uncond.append(tok)
                umask.append(1)
        assert valid.any()
        out.append(row)
    return np.asarray(out)


# ------------------------------------------------------------------ parity with the original's references
def test_t2i_greedy_matches_original(model, fixtures_dir, ops_path):
    for name, ref in load_refs(fixtures_dir, "gen_t2i_*.npz"):
        out = t2i(model, ref)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, ref["sequences"], err_msg=name)
        np.testing.assert_array_equal(out[:, ref["input_ids"].shape[1]:], ref["new_tokens"], err_msg=name)


def test_t2i_decoded_images_match_original(model, processor, fixtures_dir, ops_path):
    for name, ref in load_refs(fixtures_dir, "gen_t2i_*.npz"):
        out = t2i(model, ref)
        for b in range(out.shape[0]):
            pieces = processor.decode(out[b])
            images = [p for p in (pieces if isinstance(pieces, list) else [pieces]) if not isinstance(p, str)]
            assert len(images) == 1, name
            got = np.asarray(images[0].convert("RGB")).astype(np.int16)
            want = ref[f"decoded_image_uint8_{b}"].astype(np.int16)
            assert got.shape == want.shape, name
            assert np.abs(got - want).max() <= 1, name


def test_vqa_greedy_matches_original(model, fixtures_dir, ops_path):
    for name, ref in load_refs(fixtures_dir, "gen_vqa_*.npz"):
        new = ref["new_tokens"]
        out = model.generate(ref["input_ids"], attention_mask=ref["attention_mask"],
                             max_new_tokens=new.shape[1], progress=False).numpy()
        np.testing.assert_array_equal(out[:, ref["input_ids"].shape[1]:], new, err_msg=name)
        np.testing.assert_array_equal(out, ref["sequences"], err_msg=name)


def test_batched_guidance_equals_separate_passes(model, fixtures_dir):
    """The one-batch [cond; uncond] design against separate per-row full forwards, with and without a negative mask
    (the negative prompts are made ragged so the uncond rows are padded too)."""
    _, ref = load_refs(fixtures_dir, "gen_t2i_batch.npz")[0]
    ids, mask, size = ref["input_ids"], ref["attention_mask"], ref["image_size"]
    neg = ref["neg_input_ids"].copy()
    neg_mask = np.ones_like(neg)
    neg[1, :5] = model.config.pad_token_id
    neg_mask[1, :5] = 0
    steps = int(grid_length(size[:, 0], size[:, 1]).max())
    for m in (None, neg_mask):
        want = reference_generate(model, ids, mask, neg, m, 3.0, size, steps)
        got = model.generate(ids, attention_mask=mask, negative_prompt_ids=neg, negative_prompt_attention_mask=m,
                             guidance_scale=3.0, image_size=size, progress=False).numpy()
        np.testing.assert_array_equal(got[:, ids.shape[1]:], want)


def test_text_generation_equals_separate_passes(model, fixtures_dir):
    _, ref = load_refs(fixtures_dir, "gen_vqa_batch.npz")[0]
    ids, mask = ref["input_ids"], ref["attention_mask"]
    want = reference_generate(model, ids, mask, None, None, None, None, 6)
    for scale in (None, 1.0):
        got = model.generate(ids, attention_mask=mask, max_new_tokens=6, guidance_scale=scale, progress=False)
        np.testing.assert_array_equal(got.numpy()[:, ids.shape[1]:], want)


# ------------------------------------------------------------------ the grid rule
@pytest.mark.parametrize("height,width", [(1, 1), (2, 1), (3, 2), (2, 3), (4, 4), (3, 5), (1, 6)])
def test_allowed_table_follows_the_original_rule(model, height, width):
    cfg = model.config
    prompt = [cfg.bos_token_id, 5, cfg.img_token_id, 7]  # the grid counts from the first image token
    steps = grid_length(height, width) + 5
    table = allowed_table(cfg, np.array([len(prompt) - 2]), np.array([height]), np.array([width]), steps).numpy()
    seq = list(prompt)
    for s in range(steps):
        allowed = original_rule(cfg, seq, height, width)
        lo, hi = table[s, 0]
        assert set(range(lo, hi)) == allowed, (s, lo, hi)
        seq.append(min(allowed))


def test_sampled_grids_satisfy_the_constraint(model, fixtures_dir):
    cfg = model.config
    _, ref = load_refs(fixtures_dir, "gen_t2i_batch.npz")[0]
    out = t2i(model, ref, do_sample=True, top_k=50, temperature=1.3, seed=1)
    prompt_len = ref["input_ids"].shape[1]
    first_visual = cfg.eoi_token_id + 1
    for b, (h, w) in enumerate(ref["image_size"]):
        new = out[b, prompt_len:]
        n = grid_length(h, w)
        assert (new[n:] == cfg.pad_token_id).all()
        grid = new[: n - 3].reshape(h, w + 1)
        assert (grid[:, -1] == cfg.eol_token_id).all()
        assert ((grid[:, :-1] >= first_visual) & (grid[:, :-1] < cfg.vocab_size)).all()
        assert list(new[n - 3: n]) == [cfg.eof_token_id, cfg.eoi_token_id, cfg.eos_token_id]


def test_sampling_is_reproducible_and_top_k_1_is_greedy(model, fixtures_dir):
    _, ref = load_refs(fixtures_dir, "gen_t2i_single.npz")[0]
    a = t2i(model, ref, do_sample=True, top_k=100, seed=7)
    b = t2i(model, ref, do_sample=True, top_k=100, seed=7)
    c = t2i(model, ref, do_sample=True, top_k=100, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(t2i(model, ref, do_sample=True, top_k=1, seed=3), ref["sequences"])
    _, vqa = load_refs(fixtures_dir, "gen_vqa_single.npz")[0]
    greedy_text = model.generate(vqa["input_ids"], max_new_tokens=8, do_sample=True, top_k=1, seed=0, progress=False)
    np.testing.assert_array_equal(greedy_text.numpy(), vqa["sequences"][:, : vqa["input_ids"].shape[1] + 8])


def test_finished_rows_are_padded(model, fixtures_dir):
    """A row that produced eos continues with pad; the grid rule's order quirks (eol tested first) are kept."""
    cfg = model.config
    _, ref = load_refs(fixtures_dir, "gen_t2i_batch.npz")[0]
    ids, mask = ref["input_ids"], ref["attention_mask"]
    out = model.generate(ids, attention_mask=mask, image_size=[[1, 1], [2, 3]], max_new_tokens=50,
                         progress=False).numpy()
    new = out[:, ids.shape[1]:]
    assert new.shape[1] == grid_length(2, 3)
    # (1, 1): visual, eol, eof, then eol (offset 4 is a multiple of w+1 = 2), eos, then pads
    assert new[0, 0] > cfg.eoi_token_id
    assert list(new[0, 1:]) == [cfg.eol_token_id, cfg.eof_token_id, cfg.eol_token_id, cfg.eos_token_id] + [
        cfg.pad_token_id] * (new.shape[1] - 5)
    assert list(new[1, -3:]) == [cfg.eof_token_id, cfg.eoi_token_id, cfg.eos_token_id]


def test_generated_length_stops_at_the_last_eos():
    from paddlemix.models.emu3.generation_emu3 import _generated_length

    eos, pad = 9, 0
    assert _generated_length(np.array([[1, eos, pad, pad], [1, 2, eos, pad]]), eos) == 3
    assert _generated_length(np.array([[1, eos, pad, pad], [1, 2, 3, 4]]), eos) == 4


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs(model, fixtures_dir):
    _, ref = load_refs(fixtures_dir, "gen_t2i_batch.npz")[0]
    ids, mask, neg, size = ref["input_ids"], ref["attention_mask"], ref["neg_input_ids"], ref["image_size"]
    cfg = model.config
    cases = [
        (dict(input_ids=np.zeros((1, 0), np.int64)), "empty"),
        (dict(input_ids=ids, attention_mask=np.zeros_like(mask)), "empty"),
        (dict(input_ids=ids, attention_mask=mask[:, 1:]), "attention mask"),
        (dict(input_ids=ids, negative_prompt_ids=neg[:1], guidance_scale=3.0), "rows"),
        (dict(input_ids=ids, image_size=np.ones((3, 2), np.int64)), "image_size"),
        (dict(input_ids=ids, image_size=np.ones((2, 3), np.int64)), "image_size"),
        (dict(input_ids=ids, image_size=np.zeros((2, 2), np.int64)), "positive"),
        (dict(input_ids=ids, image_size=size, max_new_tokens=int(grid_length(size[:, 0], size[:, 1]).max()) - 1),
         "too small"),
        (dict(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], image_size=size), "image token"),
        (dict(input_ids=ids, image_size=[[cfg.max_position_embeddings // 2, 1]]), "max_position_embeddings"),
        (dict(input_ids=ids, negative_prompt_ids=np.zeros((2, cfg.max_position_embeddings), np.int64),
              guidance_scale=3.0, max_new_tokens=1), "max_position_embeddings"),
        (dict(input_ids=ids, max_new_tokens=0), "max_new_tokens"),
        (dict(input_ids=ids, max_new_tokens=4, do_sample=True, top_p=1.5), "top_p"),
        (dict(input_ids=ids, max_new_tokens=4, do_sample=True, temperature=0), "temperature"),
        (dict(input_ids=ids, max_new_tokens=4, do_sample=True, top_k=-1), "top_k"),
        (dict(input_ids=np.full((1, 3), 0.5)), "integers"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            model.generate(progress=False, **kwargs)


# ------------------------------------------------------------------ the example script
def test_generation_script_on_fixture_checkpoints(fixtures_dir, tmp_path):
    script = os.path.join(REPO, "paddlemix", "examples", "emu3", "run_generation_inference.py")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable, script, "--model_path", str(fixtures_dir / "llm"),
        "--vq_model_path", str(fixtures_dir / "vision_tokenizer"), "--tokenizer_path", str(fixtures_dir / "tokenizer"),
        "--prompt", "a portrait of young girl.", "--prompt", "a shiba inu", "--ratio", "1:1", "--ratio", "16:9",
        "--greedy", "--output_dir", str(tmp_path),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    pngs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".png"))
    assert len(pngs) == 2, (pngs, res.stdout)
    wrote = [line.rsplit(": wrote ", 1)[1] for line in res.stdout.splitlines() if ": wrote " in line]
    assert wrote == [str(tmp_path / p) for p in pngs], res.stdout
    # the same prompts as the original's batch reference: the same images
    _, ref = load_refs(fixtures_dir, "gen_t2i_batch.npz")[0]
    from PIL import Image

    for b, name in enumerate(pngs):
        got = np.asarray(Image.open(tmp_path / name).convert("RGB")).astype(np.int16)
        want = ref[f"decoded_image_uint8_{b}"].astype(np.int16)
        assert got.shape == want.shape and np.abs(got - want).max() <= 1
    bad = subprocess.run(cmd[:2] + ["--model_path", str(tmp_path / "missing"), "--prompt", "x"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "missing" in bad.stderr and "Traceback" not in bad.stderr


def test_text_generation_is_capped_at_max_position_embeddings(model, fixtures_dir):
    cfg = model.config
    _, ref = load_refs(fixtures_dir, "gen_vqa_single.npz")[0]
    ids = ref["input_ids"]
    reps = (cfg.max_position_embeddings - 3) // ids.shape[1] + 1
    long_ids = np.tile(ids, (1, reps))[:, : cfg.max_position_embeddings - 3]
    out = model.generate(long_ids, max_new_tokens=50, progress=False)
    assert out.shape[1] <= cfg.max_position_embeddings and out.shape[1] > long_ids.shape[1]
    with pytest.raises(ValueError, match="no room"):
        model.generate(np.tile(ids, (1, reps))[:, : cfg.max_position_embeddings], max_new_tokens=1, progress=False)


def test_single_image_size_applies_to_every_row(model, fixtures_dir):
    _, ref = load_refs(fixtures_dir, "gen_t2i_single.npz")[0]
    size = tuple(int(v) for v in ref["image_size"][0])
    out = model.generate(ref["input_ids"], negative_prompt_ids=ref["neg_input_ids"], guidance_scale=3.0,
                         image_size=size, progress=False).numpy()
    np.testing.assert_array_equal(out, ref["sequences"])
