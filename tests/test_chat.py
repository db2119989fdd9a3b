"""Chat: the chat template against the original's prompts, multi-turn format, several images, text-only questions,
token streaming (whole UTF-8 characters), the KV-cached chat session, the Stage1 prompt and the script's
--stream / --chat."""

import importlib.util
import os
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from paddlemix.models.emu3 import (
    ChatSession, Emu3ForCausalLM, Emu3KVCache, Emu3Processor, TextIteratorStreamer, TextStreamer,
)
from paddlemix.models.emu3.processing_emu3 import STAGE1_CHAT_TEMPLATE

from test_processor import load_processor

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "paddlemix" / "examples" / "emu3" / "run_understanding_inference.py"


@pytest.fixture(scope="module")
def processor(fixtures_dir):
    return load_processor(fixtures_dir, fixtures_dir / "tokenizer")


@pytest.fixture(scope="module")
def model(fixtures_dir):
    return Emu3ForCausalLM.from_pretrained(str(fixtures_dir / "llm"), dtype="float32")


def image(fixtures_dir, name):
    return Image.open(fixtures_dir / "inputs" / f"{name}.png")


def image_string(tok, codes):
    """An image's prompt text written from the fixture's rules: boi, "h*w", img, rows of visual tokens + eol each,
    eof, eoi (fixtures README, processor section)."""
    h, w = codes.shape
    rows = "".join("".join(f"<|visual token {c:06d}|>" for c in row) + tok.eol_token for row in codes.tolist())
    return tok.boi_token + f"{h}*{w}" + tok.img_token + rows + tok.eof_token + tok.eoi_token


def user(text, n_images=1):
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


# ------------------------------------------------------------------ the template
@pytest.mark.parametrize("case", ["U_single", "U_batch"])
def test_single_turn_equals_original_ids(processor, fixtures_dir, case):
    ref = np.load(fixtures_dir / "refs" / f"processor_{case}.npz")
    images = [image(fixtures_dir, str(n)) for n in ref["image_names"]]
    conversations = [[user(str(t))] for t in ref["text"]]
    out = processor.apply_chat_template(
        conversations, tokenize=True, images=[[im] for im in images], padding_image=case == "U_batch",
        return_tensors="np",
    )
    np.testing.assert_array_equal(out["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(out["attention_mask"], ref["attention_mask"])
    # the images may also ride in the messages themselves
    attached = [[{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": str(t)}]}]
                for im, t in zip(images, ref["text"])]
    out = processor.apply_chat_template(attached, tokenize=True, padding_image=case == "U_batch", return_tensors="np")
    np.testing.assert_array_equal(out["input_ids"], ref["input_ids"])


def test_single_turn_from_an_hf_folder(hf_fixtures_dir, fixtures_dir):
    """The -hf folder's tokenizer (tokenizer.json, <image> a special token) gives the original ids too."""
    ref = np.load(fixtures_dir / "refs" / "processor_U_single.npz")
    hf = Emu3Processor.from_pretrained(str(hf_fixtures_dir))
    out = hf.apply_chat_template([user(str(ref["text"][0]))], tokenize=True, images=[image(fixtures_dir, "img_a")],
                                 return_tensors="np")
    np.testing.assert_array_equal(out["input_ids"], ref["input_ids"])


def test_multi_turn_format(processor, fixtures_dir):
    messages = [
        {"role": "system", "content": "Be brief."},
        user("What is this"),
        {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
        {"role": "user", "content": "Which color"},
    ]
    want = "Be brief. USER: <image>What is this. ASSISTANT: A square. USER: Which color. ASSISTANT:"
    assert processor.apply_chat_template(messages) == want
    assert processor.apply_chat_template(messages, add_generation_prompt=False) == want[: -len("ASSISTANT:")]
    assert processor.apply_chat_template(messages[1:]) == "You are a helpful assistant. " + want[len("Be brief. "):]
    assert processor.apply_chat_template(messages[1:], system_prompt=None) == want[len("Be brief. "):]
    tok = processor.tokenizer
    codes = np.load(fixtures_dir / "refs" / "processor_U_image_tokens.npz")["U_single_img_a"]
    ids = processor.apply_chat_template(messages, tokenize=True, images=[image(fixtures_dir, "img_a")],
                                        return_tensors="np")["input_ids"][0]
    expected = tok.encode(tok.bos_token + want.replace("<image>", image_string(tok, codes)))
    np.testing.assert_array_equal(ids, expected)


def test_several_images_in_order(processor, fixtures_dir):
    tok = processor.tokenizer
    refs = np.load(fixtures_dir / "refs" / "processor_U_image_tokens.npz")
    images = [image(fixtures_dir, "img_a"), image(fixtures_dir, "img_b")]
    question = "Compare <image> with <image>"
    out = processor.apply_chat_template([{"role": "user", "content": question}], tokenize=True, images=images,
                                        return_tensors="np")
    ids = out["input_ids"][0]
    first = tok.convert_tokens_to_ids("<|visual token 000000|>")
    grids = []
    for b, e in zip(np.flatnonzero(ids == tok.boi_token_id), np.flatnonzero(ids == tok.eoi_token_id)):
        rows = np.split(ids[b:e], np.flatnonzero(ids[b:e] == tok.eol_token_id))
        grids.append(np.stack([r[r >= first] - first for r in rows if (r >= first).any()]))
    assert len(grids) == 2
    for grid, name in zip(grids, ["img_a", "img_b"]):  # each image as if tokenized alone
        np.testing.assert_array_equal(grid, refs[f"U_batch_unpadded_{name}"])
    a, b = (image_string(tok, g) for g in grids)
    want = f"You are a helpful assistant. USER: Compare {a} with {b}. ASSISTANT:"
    np.testing.assert_array_equal(ids, tok.encode(tok.bos_token + want))
    np.testing.assert_array_equal(out["image_size"], [list(grids[0].shape)])
    # a text with placeholders is a whole prompt to the processor (transformers' style)
    raw = processor(question, images, mode="U", return_tensors="np")["input_ids"][0]
    np.testing.assert_array_equal(raw, tok.encode(f"{tok.bos_token}Compare {a} with {b}"))
    with pytest.raises(ValueError, match="1 images for 2 placeholders"):
        processor(question, images[:1], mode="U")
    with pytest.raises(ValueError, match="conversation 0 has 2 images"):
        processor.apply_chat_template([user("two", 2)], tokenize=True, images=images[:1])


def test_text_only_question(processor):
    tok = processor.tokenizer
    want = tok.bos_token + "You are a helpful assistant. USER: What is a cat. ASSISTANT:"
    for out in (
        processor("What is a cat", mode="U", return_tensors="np"),
        processor.apply_chat_template([{"role": "user", "content": "What is a cat"}], tokenize=True,
                                      return_tensors="np"),
    ):
        np.testing.assert_array_equal(out["input_ids"][0], tok.encode(want))
        assert tok.img_token_id not in out["input_ids"][0]


def test_stage1_prompt(processor, fixtures_dir):
    tok = processor.tokenizer
    codes = np.load(fixtures_dir / "refs" / "processor_U_image_tokens.npz")["U_single_img_a"]
    prompts, _ = processor.build_prompts("The image shows", image(fixtures_dir, "img_a"), mode="U",
                                         chat_template=STAGE1_CHAT_TEMPLATE)
    assert prompts == [tok.bos_token + image_string(tok, codes) + "The image shows"]


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty"),
    ([{"role": "bot", "content": "hi"}], "role"),
    ([{"role": "user"}], "'role' and 'content'"),
    ([{"role": "user", "content": [{"type": "video"}]}], "items"),
    ([{"role": "assistant", "content": [{"type": "image"}]}], "only user"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system message"),
])
def test_bad_messages(processor, messages, match):
    with pytest.raises(ValueError, match=match):
        processor.apply_chat_template(messages)


# ------------------------------------------------------------------ streaming
def byte_ids(tok, data):
    """One token per byte (the fixture's byte-level BPE has every single byte as a token)."""
    vocab = tok.get_vocab()
    return [vocab[bytes([b])] for b in data]


def stream(tok, chunks, **kwargs):
    pieces = []
    streamer = TextStreamer(tok, callback=pieces.append, **kwargs)
    streamer.put(np.array([[tok.bos_token_id]]))  # the prompt, skipped
    for chunk in chunks:
        streamer.put(np.asarray(chunk))
    streamer.end()
    return pieces


def test_streamer_whole_characters(processor):
    tok = processor.tokenizer
    ascii_ids = tok.encode("The quick brown fox")
    assert "".join(stream(tok, [[i] for i in ascii_ids])) == "The quick brown fox"
    text = "héllo → 😀!"
    ids = byte_ids(tok, text.encode("utf-8"))
    pieces = stream(tok, [[i] for i in ids])
    assert pieces == list(text)  # a character comes out when its last byte arrives, never a partial one
    # special tokens between the bytes of one character are skipped, as in a batch decode
    mixed = ids[:2] + [tok.eos_token_id] + ids[2:]
    assert "".join(stream(tok, [[i] for i in mixed])) == tok.decode(mixed, skip_special_tokens=True) == text
    assert "".join(stream(tok, [[i] for i in mixed], skip_special_tokens=False)) == tok.decode(mixed)
    # broken UTF-8: a stray continuation byte, and a character cut at the end: U+FFFD as in the batch decode
    broken = byte_ids(tok, b"a\x80b") + ids[7:9]
    got = stream(tok, [[i] for i in broken])
    assert "".join(got) == tok.decode(broken) == "a\ufffdb\ufffd"


def test_iterator_streamer_from_another_thread(processor):
    tok = processor.tokenizer
    ids = byte_ids(tok, "ça va? ✓".encode("utf-8"))
    streamer = TextIteratorStreamer(tok, timeout=30)

    def produce():
        streamer.put(np.array([[tok.bos_token_id]]))
        for i in ids:
            streamer.put(np.array([i]))
        streamer.end()

    thread = threading.Thread(target=produce)
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert pieces == list("ça va? ✓")


def test_streamed_vqa_equals_reference(model, processor, fixtures_dir):
    ref = np.load(fixtures_dir / "refs" / "gen_vqa_single.npz")
    pieces = []
    streamer = TextStreamer(processor.tokenizer, callback=pieces.append)
    out = model.generate(ref["input_ids"], attention_mask=ref["attention_mask"], streamer=streamer,
                         max_new_tokens=ref["new_tokens"].shape[1], progress=False).numpy()
    np.testing.assert_array_equal(out[:, ref["input_ids"].shape[1]:], ref["new_tokens"])
    assert streamer.token_ids == ref["new_tokens"][0].tolist()
    assert "".join(pieces) == str(ref["answers_skip_special"][0])


# ------------------------------------------------------------------ chat session
def test_chat_session_follow_up_equals_from_scratch(model, processor, fixtures_dir):
    ref = np.load(fixtures_dir / "refs" / "gen_vqa_single.npz")
    session = ChatSession(model, processor)
    encoded = []
    encode = processor.vision_tokenizer.encode
    processor.vision_tokenizer.encode = lambda *a, **k: encoded.append(1) or encode(*a, **k)
    prefills = []
    forward = model.model.forward
    model.model.forward = lambda ids, *a, **k: (prefills.append(ids.shape[1]), forward(ids, *a, **k))[1]
    try:
        n_new = ref["new_tokens"].shape[1]
        question = str(np.load(fixtures_dir / "refs" / "processor_U_single.npz")["text"][0])
        answer = session.ask(question, image(fixtures_dir, "img_a"), max_new_tokens=n_new, progress=False)
        # turn 1 is the original VQA
        prompt_len = ref["input_ids"].shape[1]
        assert session.token_ids == ref["input_ids"][0].tolist() + ref["new_tokens"][0].tolist()
        assert answer == str(ref["answers_skip_special"][0])
        history = list(session.token_ids)
        first_prefill = prefills[0]
        prefills.clear()
        pieces = []
        follow = session.ask("What color is it?", max_new_tokens=6, progress=False,
                             streamer=TextStreamer(processor.tokenizer, callback=pieces.append))
    finally:
        del processor.vision_tokenizer.encode
        del model.model.forward
    assert len(encoded) == 1  # the image was encoded once, for turn 1
    turn = processor.tokenizer.encode(" USER: What color is it?. ASSISTANT:")
    assert session.token_ids[:len(history) + len(turn)] == history + turn
    # turn 2 prefilled only the last answer token (never fed) and its own tokens, not the image
    assert first_prefill == prompt_len and prefills[0] == 1 + len(turn)
    new = session.token_ids[len(history) + len(turn):]
    scratch = model.generate(np.array([history + turn]), max_new_tokens=6, progress=False).numpy()[0]
    want = scratch[len(history) + len(turn):].tolist()
    if want[-1] == processor.tokenizer.eos_token_id:
        want = want[:-1]
    assert new == want and follow == processor.tokenizer.decode(want, skip_special_tokens=True) == "".join(pieces)
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    session.reset()
    assert session.token_ids == [] and session.cache is None


# ------------------------------------------------------------------ the script
def run_script(fixtures_dir, args, stdin=None):
    command = [
        sys.executable, str(SCRIPT),
        "--model_path", str(fixtures_dir / "llm"),
        "--vq_model_path", str(fixtures_dir / "vision_tokenizer"),
        "--tokenizer_path", str(fixtures_dir / "tokenizer"),
        "--dtype", "float32",
        "--image_path", str(fixtures_dir / "inputs" / "img_a.png"),
    ] + args
    env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONPATH=str(SCRIPT.parents[3]))
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, encoding="utf-8", env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_script_stream_and_chat(model, processor, fixtures_dir):
    ref = np.load(fixtures_dir / "refs" / "gen_vqa_single.npz")
    n_new = str(ref["new_tokens"].shape[1])
    out = run_script(fixtures_dir, ["--question", "Please describe the image", "--max_new_tokens", n_new, "--stream"])
    assert out.endswith(f"Answer 0: {ref['answers_skip_special'][0]}\n")

    out = run_script(fixtures_dir, ["--chat", "--stream", "--max_new_tokens", "4", "--system_prompt", "Be brief."],
                     stdin="Please describe the image\n\nWhat color is it?\n")
    # the same conversation through the library
    session = ChatSession(model, processor, system_prompt="Be brief.")
    first = session.ask("Please describe the image", image(fixtures_dir, "img_a"), max_new_tokens=4, progress=False)
    second = session.ask("What color is it?", max_new_tokens=4, progress=False)
    assert out == f"Assistant: {first}\nAssistant: {second}\n"


def test_bad_chat_arguments(model, processor, fixtures_dir, capsys):
    ids = np.load(fixtures_dir / "refs" / "gen_vqa_single.npz")["input_ids"]
    cache = Emu3KVCache.for_model(model.config, 1, 8, model.dtype)
    with pytest.raises(ValueError, match="text generation only"):
        model.generate(ids, past_key_values=cache, guidance_scale=3.0, progress=False)
    with pytest.raises(ValueError, match="must not be padded"):
        model.generate(ids, attention_mask=np.concatenate([[[0]], np.ones_like(ids[:, 1:])], 1),
                       past_key_values=cache, progress=False)
    with pytest.raises(ValueError, match="2 rows"):
        model.generate(ids, past_key_values=Emu3KVCache.for_model(model.config, 2, 8, model.dtype), progress=False)
    with pytest.raises(ValueError, match="Emu3KVCache"):
        model.generate(ids, past_key_values=[], progress=False)
    with pytest.raises(ValueError, match="one sequence"):
        TextStreamer(processor.tokenizer).put(np.zeros((2, 3), np.int64))
    session = ChatSession(model, processor)
    with pytest.raises(ValueError, match="needs a text or an image"):
        session.ask("")
    with pytest.raises(ValueError, match="PIL"):
        session.ask("hi", images=[np.zeros((8, 8, 3))])
    spec = importlib.util.spec_from_file_location("run_understanding_inference", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for argv, match in (
        (["--question", "a", "--question", "b", "--stream"], "one question"),
        (["--chat", "--stage1"], "--stage1"),
        (["--chat", "--question", "a", "--question", "b"], "at most one"),
        (["--question", "<image> and <image>", "--image_path", str(fixtures_dir / "inputs" / "img_a.png")],
         "2 <image> placeholders but 1"),
        ([], "--question is required"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            script.parse_args(argv)
        assert exit_info.value.code == 2 and match in capsys.readouterr().err, argv
