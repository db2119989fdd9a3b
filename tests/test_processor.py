"""Emu3Processor against the reference processor outputs, plus decode and bad-input behaviour."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from paddlemix.models.emu3 import (
    Emu3Processor,
    Emu3Tokenizer,
    Emu3VisionVQImageProcessor,
    Emu3VisionVQModel,
)

# How each reference case called the processor (fixtures README 4.3); the expected outputs all come from the npz.
CASE_CALLS = {
    "G_single": dict(mode="G", ratio="1:1"),
    "G_single_neg": dict(mode="G", ratio="1:1"),
    "G_batch": dict(mode="G", ratio=["1:1", "16:9"]),
    "G_batch_neg": dict(mode="G", ratio=["1:1", "16:9"]),
    "U_single": dict(mode="U"),
    "U_batch": dict(mode="U", padding_image=True),
}


def load_processor(config_dir, tokenizer_dir):
    vq = Emu3VisionVQModel.from_pretrained(config_dir / "vision_tokenizer")
    image_processor = Emu3VisionVQImageProcessor.from_pretrained(config_dir / "vision_tokenizer")
    tokenizer = Emu3Tokenizer.from_pretrained(tokenizer_dir)
    image_area = json.loads((config_dir / "llm" / "config.json").read_text())["image_area"]
    return Emu3Processor(image_processor, vq, tokenizer, image_area=image_area)


def real_offset_config_dir(fixtures_dir, real_offset_dir):
    """The configuration whose vision tokenizer the real-offset refs used (the public one, README 6)."""
    with open(real_offset_dir / "tokenizer" / "emu3_vision_tokens.txt", encoding="utf-8") as f:
        n_visual = sum(1 for line in f if line.strip()) - 3
    for candidate in (real_offset_dir.parent / "public", fixtures_dir):
        config = candidate / "vision_tokenizer" / "config.json"
        if config.is_file() and json.loads(config.read_text())["codebook_size"] == n_visual:
            return candidate
    pytest.fail(f"no fixture configuration has a vision tokenizer with {n_visual} codes for {real_offset_dir}")


@pytest.fixture(scope="module")
def processor(fixtures_dir):
    return load_processor(fixtures_dir, fixtures_dir / "tokenizer")


@pytest.fixture(scope="module")
def real_offset_processor(fixtures_dir, real_offset_dir):
    return load_processor(real_offset_config_dir(fixtures_dir, real_offset_dir), real_offset_dir / "tokenizer")


def open_image(config_dir, name):
    return Image.open(config_dir / "inputs" / f"{name}.png")


def reference_cases(refs):
    cases = sorted(p.stem[len("processor_"):] for p in refs.glob("processor_*.npz"))
    cases = [c for c in cases if c != "U_image_tokens"]
    assert set(cases) == set(CASE_CALLS), f"unexpected processor cases in {refs}: {cases}"
    return cases


def check_case(processor, refs, inputs_dir, case):
    ref = np.load(refs / f"processor_{case}.npz")
    call = CASE_CALLS[case]
    texts = [str(t) for t in ref["text"]]
    images = [open_image(inputs_dir, str(n)) for n in ref["image_names"]] if call["mode"] == "U" else None
    prompts, sizes = processor.build_prompts(texts, images, **call)
    assert prompts == [str(s) for s in ref["prompt_strings"]]
    np.testing.assert_array_equal(np.asarray(sizes), ref["image_size"])
    out = processor(texts, images, return_tensors="np", **call)
    assert set(out) == {"input_ids", "attention_mask", "image_size"}
    for key in ("input_ids", "attention_mask", "image_size"):
        assert out[key].dtype == np.int64
        np.testing.assert_array_equal(out[key], ref[key], err_msg=f"{case} {key}")
    for row, mask, prompt in zip(out["input_ids"], out["attention_mask"], ref["prompt_strings"]):
        assert processor.tokenizer.decode(row[mask == 1]) == prompt
    if "decoded_with_padding" in ref.files:
        assert processor.tokenizer.batch_decode(out["input_ids"]) == [str(s) for s in ref["decoded_with_padding"]]
    pd_out = processor(texts, images, **call)
    np.testing.assert_array_equal(pd_out.input_ids.numpy(), ref["input_ids"])
    np.testing.assert_array_equal(pd_out.image_size.numpy(), ref["image_size"])


@pytest.mark.parametrize("case", sorted(CASE_CALLS))
def test_reference_case(processor, fixtures_dir, case):
    assert case in reference_cases(fixtures_dir / "refs")
    check_case(processor, fixtures_dir / "refs", fixtures_dir, case)


@pytest.mark.parametrize("case", sorted(CASE_CALLS))
def test_reference_case_real_offset(real_offset_processor, fixtures_dir, real_offset_dir, case):
    assert case in reference_cases(real_offset_dir / "refs")
    config_dir = real_offset_config_dir(fixtures_dir, real_offset_dir)
    check_case(real_offset_processor, real_offset_dir / "refs", config_dir, case)


def test_tokenize_image_grids(processor, fixtures_dir, monkeypatch):
    ref = np.load(fixtures_dir / "refs" / "processor_U_image_tokens.npz")
    names = [str(n) for n in np.load(fixtures_dir / "refs" / "processor_U_batch.npz")["image_names"]]
    single = [str(n) for n in np.load(fixtures_dir / "refs" / "processor_U_single.npz")["image_names"]]
    images = [open_image(fixtures_dir, n) for n in names]

    calls = []
    encode = processor.vision_tokenizer.encode
    monkeypatch.setattr(processor.vision_tokenizer, "encode", lambda x: calls.append(x.shape) or encode(x))
    [grid] = processor.tokenize_image([open_image(fixtures_dir, single[0])])
    np.testing.assert_array_equal(grid, ref[f"U_single_{single[0]}"])
    calls.clear()
    padded = processor.tokenize_image(images, padding_image=True)
    assert len(calls) == 1, "padded images must be encoded in one batch"
    unpadded = processor.tokenize_image(images, padding_image=False)
    for name, p, u in zip(names, padded, unpadded):
        np.testing.assert_array_equal(p, ref[f"U_batch_padded_{name}"])
        np.testing.assert_array_equal(u, ref[f"U_batch_unpadded_{name}"])
    # images of one size share one encode call
    calls.clear()
    same = processor.tokenize_image([images[0], images[0].copy()], padding_image=False)
    assert len(calls) == 1
    np.testing.assert_array_equal(same[0], same[1])


def test_generate_size_rounds_half_to_even(processor):
    f = processor.spatial_factor
    # sqrt(area) / f == 4.5 exactly: Python's round gives 4 (round-half-up would give 5)
    _, sizes = processor.build_prompts("x", mode="G", ratio="1:1", image_area=(9 * f // 2) ** 2)
    assert sizes == [(4, 4)]
    # 16:9: the grid from the original's formula, evaluated here independently
    area = (12 * f) ** 2
    target = (area / (16 * 9)) ** 0.5
    _, sizes = processor.build_prompts("x", mode="G", ratio="16:9", image_area=area)
    assert sizes == [(round(9 * target / f), round(16 * target / f))]
    _, default = processor.build_prompts(["x", "y"], mode="G", ratio=["1:1", "2:1"])
    _, explicit = processor.build_prompts(["x", "y"], mode="G", ratio=["1:1", "2:1"], image_area=processor.image_area)
    assert default == explicit


def test_decode_generated_images(processor, fixtures_dir):
    for name in ("gen_t2i_single", "gen_t2i_batch"):
        ref = np.load(fixtures_dir / "refs" / f"{name}.npz")
        results = processor.batch_decode(ref["sequences"])
        assert processor.decode(ref["sequences"][0])[0] == results[0][0]
        for b, pieces in enumerate(results):
            texts = [p for p in pieces if isinstance(p, str)]
            images = [p for p in pieces if isinstance(p, Image.Image)]
            assert " ||| ".join(texts) == ref["processor_decode_text_parts"][b]
            assert len(images) == 1
            expected = ref[f"decoded_image_uint8_{b}"].astype(np.int16)
            assert np.abs(np.asarray(images[0], dtype=np.int16) - expected).max() <= 1


def test_decode_answers(processor, fixtures_dir):
    ref = np.load(fixtures_dir / "refs" / "gen_vqa_batch.npz")
    assert processor.batch_decode(ref["new_tokens"], skip_special_tokens=True) == list(ref["answers_skip_special"])
    assert processor.batch_decode(ref["new_tokens"]) == list(ref["answers_raw"])


def image_ids(tok, codes, start, eoi=True):
    """ids of boi + "h*w" + img + rows joined by eol + eol + eof (+ eoi), built without the processor."""
    h, w = codes.shape
    ids = [tok.boi_token_id] + tok.encode(f"{h}*{w}") + [tok.img_token_id]
    for r, row in enumerate(codes):
        ids += [start + int(c) for c in row]
        ids.append(tok.eol_token_id)
    ids.append(tok.eof_token_id)
    return ids + ([tok.eoi_token_id] if eoi else [])


def reference_image(processor, codes):
    pixels = processor.vision_tokenizer.decode(codes[None])
    return np.asarray(processor.image_processor.postprocess(pixels)["pixel_values"][0])


def test_decode_hand_built_sequence(processor, fixtures_dir):
    tok = processor.tokenizer
    vq_ref = np.load(fixtures_dir / "refs" / "vq_img_a.npz")
    codes = vq_ref["codes"][0]
    start = tok.convert_tokens_to_ids("<|visual token 000000|>")
    ids = tok.encode("Here:") + image_ids(tok, codes, start) + tok.encode(" done") + [tok.eos_token_id]
    pieces = processor.decode(np.asarray(ids))
    assert [type(p) for p in pieces] == [str, Image.Image, str]
    assert pieces[0] == "Here:" and pieces[2] == " done" + tok.eos_token
    image = np.asarray(pieces[1])
    np.testing.assert_array_equal(image, reference_image(processor, codes))
    assert np.abs(image.astype(np.int16) - vq_ref["recon_uint8"].astype(np.int16)).max() <= 1
    assert processor.decode(ids, skip_special_tokens=True) == "Here:" + f"{codes.shape[0]}*{codes.shape[1]}" + " done"
    assert processor.decode([]) == ""


def test_decode_truncated_sequences(processor, fixtures_dir):
    tok = processor.tokenizer
    codes = np.load(fixtures_dir / "refs" / "vq_img_b.npz")["codes"][0]
    h, w = codes.shape
    start = tok.convert_tokens_to_ids("<|visual token 000000|>")
    prompt = tok.encode("a cat")
    full = prompt + image_ids(tok, codes, start, eoi=False)

    # no eoi, every row complete: the whole grid
    pieces = processor.decode(full)
    assert pieces[0] == "a cat"
    np.testing.assert_array_equal(np.asarray(pieces[1]), reference_image(processor, codes))

    # cut in the middle of the last row: only the complete rows
    keep_rows = h - 1
    cut = full[: len(prompt) + 1 + len(tok.encode(f"{h}*{w}")) + 1 + keep_rows * (w + 1) + w // 2]
    pieces = processor.decode(cut)
    assert pieces[0] == "a cat"
    np.testing.assert_array_equal(np.asarray(pieces[1]), reference_image(processor, codes[:keep_rows]))
    assert pieces[1].size == (w * processor.spatial_factor, keep_rows * processor.spatial_factor)

    # no visual token yet (a generation prompt): the segment stays text
    g_prompt = [tok.bos_token_id] + prompt + [tok.boi_token_id] + tok.encode(f"{h}*{w}") + [tok.img_token_id]
    assert processor.decode(g_prompt) == [tok.bos_token + "a cat", tok.decode(g_prompt[len(prompt) + 1:])]

    # a complete image with a ragged row, or with no visual token, is an error
    ragged = image_ids(tok, codes, start)
    del ragged[len(tok.encode(f"{h}*{w}")) + 3]
    with pytest.raises(ValueError, match="different lengths"):
        processor.decode(ragged)
    with pytest.raises(ValueError, match="no visual tokens"):
        processor.decode([tok.boi_token_id, tok.img_token_id, tok.eoi_token_id])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="G", ratio="1:0"), "positive"),
        (dict(mode="G", ratio="0:1"), "positive"),
        (dict(mode="G", ratio="16x9"), "W:H"),
        (dict(mode="G", ratio="a:b"), "W:H"),
        (dict(mode="G", ratio="1:2:3"), "W:H"),
        (dict(mode="G", ratio=["1:1", "1:1", "1:1"]), "3 ratios for 2 prompts"),
        (dict(mode="G", image_area=0), "image_area"),
        (dict(mode="G", ratio="1000:1", image_area=64), "empty token grid"),
        (dict(mode="X"), "mode"),
    ],
)
def test_bad_inputs(processor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        processor(["a dog", "a cat"], **kwargs)


def test_bad_images_and_texts(processor, fixtures_dir):
    image = open_image(fixtures_dir, "img_a")
    with pytest.raises(ValueError, match="takes no image"):
        processor("a dog", image, mode="G")
    with pytest.raises(ValueError, match="2 images for 1 texts"):
        processor("a dog", [image, image], mode="U")
    with pytest.raises(ValueError, match="PIL"):
        processor("a dog", np.zeros((8, 8, 3), np.uint8), mode="U")
    with pytest.raises(ValueError, match="empty prompt"):
        processor(["a dog", ""], mode="G")
    with pytest.raises(ValueError, match="non-empty list"):
        processor([], mode="G")
    with pytest.raises(ValueError, match="must be a str"):
        processor([1], mode="G")


@pytest.mark.parametrize("case", ["single", "batch"])
def test_understanding_script(fixtures_dir, case):
    """run_understanding_inference.py on the fixture checkpoints prints the reference greedy answers."""
    ref = np.load(fixtures_dir / "refs" / f"gen_vqa_{case}.npz")
    inputs = np.load(fixtures_dir / "refs" / f"processor_U_{case}.npz")
    script = pathlib.Path(__file__).resolve().parent.parent / "paddlemix" / "examples" / "emu3"
    command = [
        sys.executable,
        str(script / "run_understanding_inference.py"),
        "--model_path", str(fixtures_dir / "llm"),
        "--vq_model_path", str(fixtures_dir / "vision_tokenizer"),
        "--tokenizer_path", str(fixtures_dir / "tokenizer"),
        "--max_new_tokens", str(ref["new_tokens"].shape[1]),
        "--dtype", "float32",
    ]
    for name, question in zip(inputs["image_names"], inputs["text"]):
        command += ["--image_path", str(fixtures_dir / "inputs" / f"{name}.png"), "--question", str(question)]
    env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONPATH=str(script.parents[2]))
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    answers = []
    for i in range(len(ref["answers_skip_special"])):
        start = out.index(f"Answer {i}: ") + len(f"Answer {i}: ")
        end = out.find(f"\nAnswer {i + 1}: ", start)
        answers.append(out[start:end] if end >= 0 else out[start:].removesuffix("\n"))
    assert answers == [str(a) for a in ref["answers_skip_special"]]


def test_understanding_script_bad_arguments(fixtures_dir):
    script = pathlib.Path(__file__).resolve().parent.parent / "paddlemix" / "examples" / "emu3"
    image = str(fixtures_dir / "inputs" / "img_a.png")
    command = [sys.executable, str(script / "run_understanding_inference.py"), "--image_path", image]
    command += ["--image_path", image, "--question", "a", "--question", "b", "--question", "c"]
    env = dict(os.environ, PYTHONPATH=str(script.parents[2]))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "one question per image" in result.stderr
