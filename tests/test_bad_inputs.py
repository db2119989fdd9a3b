"""Every public entry point turns a bad input into a ValueError (or TypeError) that names the problem, before any Paddle
kernel sees it: no internal Paddle error, IndexError or KeyError, and no silent result from an id out of range."""

import importlib.util

import numpy as np
import paddle
import pytest
from PIL import Image

from conftest import REPO_ROOT
from paddlemix.models.emu3 import (Emu3ForCausalLM, Emu3Processor, Emu3Tokenizer, Emu3VisionVQImageProcessor,
                                   Emu3VisionVQModel, check_token_ids)

SCRIPTS = REPO_ROOT / "paddlemix" / "examples" / "emu3"


@pytest.fixture(scope="module")
def parts(fixtures_dir):
    vq_dir = str(fixtures_dir / "vision_tokenizer")
    tokenizer = Emu3Tokenizer.from_pretrained(str(fixtures_dir / "tokenizer"))
    image_processor = Emu3VisionVQImageProcessor.from_pretrained(vq_dir)
    vq = Emu3VisionVQModel.from_pretrained(vq_dir)
    lm = Emu3ForCausalLM.from_pretrained(str(fixtures_dir / "llm"))
    processor = Emu3Processor(image_processor, vq, tokenizer, image_area=lm.config.image_area)
    return dict(tok=tokenizer, ip=image_processor, vq=vq, lm=lm, proc=processor, V=lm.config.vocab_size,
                K=vq.config.codebook_size)


def gen(p, ids, **kwargs):
    return p["lm"].generate(ids, progress=False, **dict(dict(max_new_tokens=2), **kwargs))


def image_ids(tok, bad):
    """A complete 1x2 image whose second visual token is the id `bad`."""
    first = tok.convert_tokens_to_ids("<|visual token 000000|>")
    return [tok.boi_token_id, tok.img_token_id, first, bad, tok.eol_token_id, tok.eof_token_id, tok.eoi_token_id]


# (name, call(parts), expected exception, regex the message must match, formatted with the vocabulary size V and
# the codebook size K)
CASES = [
    # Emu3ForCausalLM.forward
    ("forward id = vocab_size", lambda p: p["lm"](paddle.to_tensor([[1, p["V"]]])), ValueError,
     r"input_ids holds token ids out of range \[0, {V}\): \[{V}\] at positions \[\[0, 1\]\]"),
    ("forward negative id", lambda p: p["lm"](paddle.to_tensor([[1, -1]])), ValueError, r"out of range.*\[-1\]"),
    ("forward numpy id", lambda p: p["lm"](np.array([[3, p["V"] + 5]])), ValueError, r"\[{V5}\]"),
    ("forward int32 id", lambda p: p["lm"](paddle.to_tensor([[p["V"]]], dtype="int32")), ValueError, r"\[{V}\]"),
    ("forward float ids", lambda p: p["lm"](paddle.to_tensor([[1.0, 2.0]])), ValueError, "input_ids must hold integers"),
    ("forward negative position", lambda p: p["lm"]([[1, 2]], position_ids=[[0, -3]]), ValueError, "position_ids"),
    ("forward float positions", lambda p: p["lm"]([[1, 2]], position_ids=[[0.5, 1.5]]), ValueError,
     "position_ids must hold integers"),
    ("forward mask of 2", lambda p: p["lm"]([[1, 2]], attention_mask=[[1, 2]]), ValueError, "only 1 .* and 0"),
    ("forward cache of another batch",
     lambda p: p["lm"]([[1], [2]], past_key_values=p["lm"]([[1]], use_cache=True).past_key_values), ValueError,
     "past_key_values holds 1 rows"),
    # generate
    ("generate id = vocab_size", lambda p: gen(p, [[1, p["V"]]]), ValueError, r"input_ids .*out of range.*\[{V}\]"),
    ("generate negative id", lambda p: gen(p, [[1, -2]]), ValueError, r"input_ids .*out of range.*\[-2\]"),
    ("generate bad negative prompt", lambda p: gen(p, [[1, 2]], negative_prompt_ids=[[p["V"] + 1]], guidance_scale=3.0),
     ValueError, r"negative_prompt_ids .*out of range.*\[{V1}\]"),
    ("generate right-padded prompt", lambda p: gen(p, [[1, 2, 3], [4, 5, 0]], attention_mask=[[1, 1, 1], [1, 1, 0]]),
     ValueError, r"row\(s\) \[1\] end with padding"),
    ("generate streamer without put/end", lambda p: gen(p, [[1, 2]], streamer=5), ValueError, "put.*end"),
    ("generate ragged prompts", lambda p: gen(p, [[1, 2], [3]]), ValueError, "rectangular"),
    ("generate top_p text", lambda p: gen(p, [[1, 2]], do_sample=True, top_p="a"), ValueError, "top_p"),
    ("generate temperature text", lambda p: gen(p, [[1, 2]], do_sample=True, temperature="a"), ValueError,
     "temperature"),
    ("generate seed text", lambda p: gen(p, [[1, 2]], do_sample=True, seed="a"), ValueError, "seed"),
    ("generate negative seed", lambda p: gen(p, [[1, 2]], do_sample=True, seed=-1), ValueError, "seed"),
    ("generate nan guidance", lambda p: gen(p, [[1, 2]], guidance_scale=float("nan")), ValueError, "guidance_scale"),
    ("generate float image_size", lambda p: gen(p, [[1, 720]], image_size=[[2.5, 2]]), ValueError, "image_size"),
    # tokenizer
    ("tokenizer decode id = vocab_size", lambda p: p["tok"].decode([p["V"] + 3]), ValueError, r"out of range.*\[{V3}\]"),
    ("tokenizer decode negative id", lambda p: p["tok"].decode([-1]), ValueError, r"out of range.*\[-1\]"),
    ("tokenizer batch_decode", lambda p: p["tok"].batch_decode([[1, p["V"]]]), ValueError, r"\[{V}\]"),
    ("tokenizer convert_ids_to_tokens", lambda p: p["tok"].convert_ids_to_tokens(p["V"]), ValueError, r"\[{V}\]"),
    ("tokenizer float ids", lambda p: p["tok"].decode([1.5]), ValueError, "integers"),
    ("tokenizer call with an int", lambda p: p["tok"](5), TypeError, "got int"),
    ("tokenizer negative max_length", lambda p: p["tok"]("hi", padding="max_length", max_length=-1), ValueError,
     "max_length"),
    # processor
    ("processor decode id = vocab_size", lambda p: p["proc"].decode([1, p["V"] + 10]), ValueError, r"\[{V10}\]"),
    ("processor decode negative id", lambda p: p["proc"].decode([1, -5]), ValueError, r"\[-5\]"),
    ("processor batch_decode", lambda p: p["proc"].batch_decode([[1, p["V"]]]), ValueError, r"\[{V}\]"),
    ("processor decode id inside an image", lambda p: p["proc"].decode(image_ids(p["tok"], p["V"] + 5)), ValueError,
     r"\[{V5}\]"),
    ("processor decode negative id inside an image", lambda p: p["proc"].decode(image_ids(p["tok"], -1)), ValueError,
     r"\[-1\]"),
    ("processor decode 2-D", lambda p: p["proc"].decode([[1, 2]]), ValueError, "batch_decode"),
    ("processor infinite image_area", lambda p: p["proc"]("a", image_area=float("inf")), ValueError, "image_area"),
    ("processor NaN image_area", lambda p: p["proc"]("a", image_area=float("nan")), ValueError, "image_area"),
    ("processor int ratio", lambda p: p["proc"]("a", ratio=1), ValueError, "ratio"),
    ("processor codes beyond the codebook", lambda p: p["proc"].codes_to_string(np.array([[p["K"]]])), ValueError,
     r"codes .*out of range \[0, {K}\)"),
    ("processor negative codes", lambda p: p["proc"].codes_to_string(np.array([[-1]])), ValueError, r"\[-1\]"),
    ("processor 1-D codes", lambda p: p["proc"].codes_to_string(np.array([1, 2])), ValueError, r"\[h, w\]"),
    # vision tokenizer
    ("VQ decode code = codebook_size", lambda p: p["vq"].decode(np.array([[[p["K"]]]])), ValueError,
     r"\[0, {K}\).*\[{K}, {K}\]"),
    ("VQ decode negative code", lambda p: p["vq"].decode(np.array([[[-1]]])), ValueError, "codebook_size"),
    ("VQ decode 2-D codes", lambda p: p["vq"].decode(np.zeros((2, 2), np.int64)), ValueError, r"\[B, h, w\]"),
    ("VQ decode 5-D codes", lambda p: p["vq"].decode(np.zeros((1, 1, 1, 2, 2), np.int64)), ValueError, r"\[B, h, w\]"),
    ("VQ decode float codes", lambda p: p["vq"].decode(np.zeros((1, 2, 2), np.float32)), ValueError, "integers"),
    ("VQ encode 3-D pixels", lambda p: p["vq"].encode(np.zeros((3, 64, 64), np.float32)), ValueError, r"\[B, C, H, W\]"),
    ("VQ encode one channel", lambda p: p["vq"].encode(np.zeros((1, 1, 64, 64), np.float32)), ValueError,
     "1 channels"),
    ("VQ encode channels last", lambda p: p["vq"].encode(np.zeros((1, 64, 64, 3), np.float32)), ValueError,
     "64 channels"),
    ("VQ encode odd size", lambda p: p["vq"].encode(np.zeros((1, 3, 63, 64), np.float32)), ValueError,
     "multiples of the spatial factor"),
    ("VQ encode 3 frames", lambda p: p["vq"].encode(np.zeros((1, 3, 3, 64, 64), np.float32)), ValueError,
     "temporal_downsample_factor"),
    ("VQ encode NaN", lambda p: p["vq"].encode(np.full((1, 3, 64, 64), np.nan, np.float32)), ValueError, "NaN"),
    # image processor
    ("image processor channels-first array", lambda p: p["ip"](np.zeros((3, 64, 64), np.uint8)), ValueError, "uint8"),
    ("image processor tiny image", lambda p: p["ip"](Image.new("RGB", (2, 2))), ValueError, "at least 8"),
    ("image processor not an image", lambda p: p["ip"](5), ValueError, "not an image"),
    ("postprocess integers", lambda p: p["ip"].postprocess(np.zeros((1, 3, 4, 4), np.int64)), ValueError,
     "floating point"),
    ("postprocess NaN", lambda p: p["ip"].postprocess(np.full((1, 3, 4, 4), np.nan, np.float32)), ValueError, "NaN"),
]


@pytest.mark.parametrize("call,error,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(parts, call, error, match):
    V, K = parts["V"], parts["K"]
    with pytest.raises(error, match=match.format(V=V, V1=V + 1, V3=V + 3, V5=V + 5, V10=V + 10, K=K)):
        call(parts)


def test_check_token_ids_names_the_offending_ids():
    check_token_ids(paddle.to_tensor([[0, 9]]), 10)
    check_token_ids(np.zeros((0, 3), np.int64), 10)
    ids = np.arange(-3, 20).reshape(1, -1)  # -3..-1 and 10..19 are out of range
    for value in (ids, paddle.to_tensor(ids)):
        with pytest.raises(ValueError) as info:
            check_token_ids(value, 10, "my_ids")
        message = str(info.value)
        assert message.startswith("my_ids holds token ids out of range [0, 10): [-3, -2, -1, 10, 11, 12, 13, 14]")
        assert "(and 5 more)" in message and "[[0, 0], [0, 1]" in message
    with pytest.raises(ValueError, match="integer"):
        check_token_ids(paddle.to_tensor([[1.0]]), 10)


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scripts_bad_arguments(fixtures_dir, tmp_path):
    understanding = load_script("run_understanding_inference")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    paths = ["--model_path", str(fixtures_dir / "llm"), "--tokenizer_path", str(fixtures_dir / "tokenizer"),
             "--vq_model_path", str(fixtures_dir / "vision_tokenizer")]
    with pytest.raises(ValueError, match="cannot read .*notes.png as an image"):
        understanding.main(paths + ["--image_path", str(not_an_image), "--question", "hi"])

    generation = load_script("run_generation_inference")
    with pytest.raises(SystemExit):  # argparse: the area twice
        generation.parse_args(["--demo", str(fixtures_dir), "--prompt", "x", "--height", "32", "--width", "32",
                               "--image_area", "1024"])
    with pytest.raises(ValueError, match="guidance_scale"):
        generation.main(["--demo", str(fixtures_dir), "--prompt", "x", "--cfg_scale", "nan", "--output_dir",
                         str(tmp_path)])

    autoencode = load_script("autoencode")
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("img_a", "img_b"):  # two sizes: not one video
        (frames / f"{name}.png").symlink_to(fixtures_dir / "inputs" / f"{name}.png")
    with pytest.raises(ValueError, match="different sizes"):
        autoencode.main(["--model_path", str(fixtures_dir / "vision_tokenizer"), "--video_path", str(frames),
                         "--output_dir", str(tmp_path / "out")])
