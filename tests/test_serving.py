"""The server with the fixture models, driven by the official ``openai`` client (as vLLM's tests/entrypoints/openai):
greedy image and answer equal the original's references, streaming gives the same text, concurrent requests are
batched without changing any result, every bad request gets its 4xx in OpenAI's error shape, Ctrl-C stops cleanly.

One ``serve.py --demo`` process serves the whole module."""

import base64
import concurrent.futures
import io
import json
import threading

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from serving_helpers import ServerProcess, data_uri, png_array

PROMPT = "a portrait of young girl."


@pytest.fixture(scope="module")
def server(fixtures_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    srv = ServerProcess(fixtures_dir, "--max_batch_size", "16", "--max_tokens", "64", "--max_image_pixels", "10000",
                        log_path=log)
    try:
        yield srv
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def refs(fixtures_dir):
    t2i = png_array_file(fixtures_dir / "refs" / "gen_t2i_single_0.png")
    vqa = np.load(fixtures_dir / "refs" / "gen_vqa_single.npz")
    return t2i, str(vqa["answers_skip_special"][0]), data_uri(fixtures_dir / "inputs" / "img_a.png")


def png_array_file(path):
    return np.asarray(Image.open(path).convert("RGB"))


def assert_image_close(got, want):
    """uint8 images from the same tokens: equal up to 1 (postprocess truncates float noise, fixtures README 5)."""
    assert got.shape == want.shape
    assert np.abs(got.astype(np.int64) - want).max() <= 1


def vqa_messages(image_url):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                         {"type": "text", "text": "Please describe the image"}]}]


def health(server):
    response = httpx.get(f"{server.base_url}/health", timeout=10)
    assert response.status_code == 200
    return response.json()


def test_per_row_seeds_make_rows_independent_of_their_batch(fixtures_dir):
    from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM

    model = Emu3ForCausalLM.from_pretrained(str(fixtures_dir / "llm"))
    ref = np.load(fixtures_dir / "refs" / "gen_t2i_batch.npz")  # two prompts, grids 4x4 and 3x5, left-padded
    args = dict(negative_prompt_ids=ref["neg_input_ids"], guidance_scale=3.0, do_sample=True, top_k=50,
                progress=False)
    both = model.generate(ref["input_ids"], attention_mask=ref["attention_mask"], image_size=ref["image_size"],
                          seed=[11, 12], **args).numpy()
    for row, seed in ((0, 11), (1, 12)):
        keep = ref["attention_mask"][row] == 1
        alone = model.generate(ref["input_ids"][row:row + 1, keep], image_size=ref["image_size"][row:row + 1],
                               seed=[seed], **dict(args, negative_prompt_ids=ref["neg_input_ids"][row:row + 1]))
        alone = alone.numpy()[0, keep.sum():]
        np.testing.assert_array_equal(both[row, ref["input_ids"].shape[1]:][: len(alone)], alone)
    # one seed for the batch is one stream over all rows: not the same as per-row seeds
    shared = model.generate(ref["input_ids"], attention_mask=ref["attention_mask"], image_size=ref["image_size"],
                            seed=11, **args).numpy()
    assert not np.array_equal(shared[1], both[1])
    with pytest.raises(ValueError, match="per-row seeds"):
        model.generate(ref["input_ids"], attention_mask=ref["attention_mask"], image_size=ref["image_size"],
                       seed=[1, 2, 3], **args)


def test_models_and_health(client, server):
    assert sorted(m.id for m in client.models.list().data) == ["emu3-chat", "emu3-gen"]
    assert health(server)["status"] == "ok"


def test_greedy_image_equals_the_reference(client, refs):
    reference, _, _ = refs
    # top_k 1 is greedy decoding; everything else is the t2i script's default (suffix, negative prompt, guidance 3)
    for size in ("1:1", "32x32", None):
        kwargs = {"size": size} if size else {}
        result = client.images.generate(prompt=PROMPT, response_format="b64_json", extra_body={"top_k": 1}, **kwargs)
        assert len(result.data) == 1
        assert_image_close(png_array(result.data[0].b64_json), reference)


def test_greedy_chat_equals_the_reference(client, refs):
    _, answer, image_url = refs
    result = client.chat.completions.create(model="emu3-chat", messages=vqa_messages(image_url), temperature=0,
                                            max_tokens=16)
    assert result.choices[0].message.content == answer
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 16
    assert result.usage.prompt_tokens == 121  # processor case U_single (fixtures README 4.3)


def test_streamed_chat_gives_the_same_text(client, refs):
    _, answer, image_url = refs
    stream = client.chat.completions.create(messages=vqa_messages(image_url), model="emu3-chat", temperature=0,
                                            max_tokens=16, stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(pieces) == answer
    assert sum(1 for p in pieces if p) > 1  # it came in several pieces
    assert finish == "length" and usage.completion_tokens == 16


def test_multi_turn_and_multi_image_chat_follow_the_chat_template(client, fixtures_dir, refs):
    """The server's answer to a conversation (system prompt, earlier turns, two images) equals greedy generate on
    the processor's rendering of the same conversation."""
    from paddlemix.models.emu3 import Emu3Processor, Emu3Tokenizer, Emu3VisionVQImageProcessor, Emu3VisionVQModel
    from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM

    _, _, image_a = refs
    image_b = data_uri(fixtures_dir / "inputs" / "img_b.png")
    openai_messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_a}},
                                     {"type": "image_url", "image_url": {"url": image_b}},
                                     {"type": "text", "text": "What differs?"}]},
    ]
    result = client.chat.completions.create(model="emu3-chat", messages=openai_messages, temperature=0,
                                            max_tokens=6)
    tokenizer = Emu3Tokenizer.from_pretrained(str(fixtures_dir / "tokenizer"))
    vq_dir = str(fixtures_dir / "vision_tokenizer")
    processor = Emu3Processor(Emu3VisionVQImageProcessor.from_pretrained(vq_dir),
                              Emu3VisionVQModel.from_pretrained(vq_dir), tokenizer, image_area=1024)
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You answer briefly."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi there"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "What differs?"}]},
    ]
    images = [Image.open(fixtures_dir / "inputs" / name).convert("RGB") for name in ("img_a.png", "img_b.png")]
    ids = processor.apply_chat_template(messages, tokenize=True, images=images, return_tensors="np")["input_ids"]
    model = Emu3ForCausalLM.from_pretrained(str(fixtures_dir / "llm"))
    new = model.generate(ids, max_new_tokens=6, progress=False).numpy()[0, ids.shape[1]:]
    new = new[: list(new).index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
    assert result.usage.prompt_tokens == ids.shape[1]
    assert result.choices[0].message.content == tokenizer.decode(new, skip_special_tokens=True)


def test_image_progress_streams_as_events(server, refs):
    reference, _, _ = refs
    body = {"prompt": PROMPT, "top_k": 1, "stream": True}
    events = []
    with httpx.stream("POST", f"{server.base_url}/v1/images/generations", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    progress = [e for e in events if e["type"] == "image_generation.progress"]
    assert [e["completed"] for e in progress] == list(range(1, 24))  # a 4x4 grid is (4+1)*4+3 = 23 tokens
    assert all(e["total"] == 23 for e in progress)
    done = [e for e in events if e["type"] == "image_generation.completed"]
    assert len(done) == 1
    assert_image_close(png_array(done[0]["b64_json"]), reference)


def test_concurrent_requests_are_batched_and_unchanged(client, server, refs):
    reference, _, _ = refs
    before = health(server)["batches"]
    # 8 greedy requests (each must give the reference) and 8 sampled ones with their own seeds and two ratios
    jobs = [dict(extra_body={"top_k": 1}, size="1:1") for _ in range(8)]
    jobs += [dict(extra_body={"seed": 100 + i}, size="1:1" if i % 2 else "16:9") for i in range(8)]
    barrier = threading.Barrier(len(jobs))

    def run(kwargs):
        barrier.wait()
        return client.images.generate(prompt=PROMPT, **kwargs).data[0].b64_json

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        images = list(pool.map(run, jobs))
    batches = health(server)["batches"] - before
    assert batches < len(jobs)
    for image in images[:8]:
        assert_image_close(png_array(image), reference)
    assert png_array(images[8]).shape != png_array(images[9]).shape  # 16:9 and 1:1
    # a sampled request alone gives what it gave inside the batch (per-request seeds)
    for i in (8, 9):
        alone = client.images.generate(prompt=PROMPT, **jobs[i]).data[0].b64_json
        assert_image_close(png_array(alone), png_array(images[i]))


def _tiny_png(size):
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


BAD_IMAGE_REQUESTS = [
    ({"prompt": 5}, 400),
    ({}, 400),
    ({"prompt": ""}, 400),
    ({"prompt": "x", "n": 0}, 400),
    ({"prompt": "x", "n": "2"}, 400),
    ({"prompt": "x", "size": "huge"}, 400),
    ({"prompt": "x", "size": "4096x4096"}, 400),
    ({"prompt": "x", "size": "0:1"}, 400),
    ({"prompt": "x", "size": "1000:1"}, 400),
    ({"prompt": "x", "response_format": "url"}, 400),
    ({"prompt": "x", "guidance_scale": -1.0}, 400),
    ({"prompt": "x", "top_k": -3}, 400),
    ({"prompt": "x", "seed": -1}, 400),
    ({"prompt": "x", "colour": "red"}, 400),
    ({"prompt": "x " * 2000}, 400),
    ({"prompt": "x", "model": "dall-e-3"}, 404),
]


def _bad_chat_requests(image_url):
    def user(*content):
        return {"messages": [{"role": "user", "content": list(content)}]}

    text = {"type": "text", "text": "What is this?"}
    return [
        ({"messages": []}, 400),
        ({"messages": "hello"}, 400),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 400),
        ({"messages": [{"role": "user"}]}, 400),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400),
        (user({"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}, text), 400),
        (user({"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGVsbG8="}}, text), 400),
        (user({"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}, text), 400),
        (user({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, text), 400),
        (user({"type": "image_url", "image_url": {"url": _tiny_png((200, 200))}}, text), 400),  # > 10000 pixels
        (user({"type": "video", "video": "x"}, text), 400),
        (user({"type": "text", "text": "word " * 3000}), 400),
        (dict(user(text), max_tokens=0), 400),
        (dict(user(text), max_tokens=100000), 400),
        (dict(user(text), temperature=5.0), 400),
        (dict(user(text), temperature="hot"), 400),
        (dict(user(text), n=2), 400),
        (dict(user(text), model="gpt-4o"), 404),
    ]


def test_bad_requests_get_4xx_and_the_server_stays_healthy(server, client, refs):
    _, _, image_url = refs
    cases = [("/v1/images/generations", body, status) for body, status in BAD_IMAGE_REQUESTS]
    cases += [("/v1/chat/completions", body, status) for body, status in _bad_chat_requests(image_url)]
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        for path in ("/v1/images/generations", "/v1/chat/completions"):
            for raw in (b"{not json", b"", b"[1, 2]", "\"\u00e9\"".encode("latin-1")):
                response = http.post(path, content=raw, headers={"Content-Type": "application/json"})
                assert response.status_code == 400, (path, raw, response.text)
                assert response.json()["error"]["type"] == "invalid_request_error"
        for path, body, status in cases:
            response = http.post(path, json=body)
            assert response.status_code == status, (path, str(body)[:200], response.text)
            error = response.json()["error"]
            assert error["message"] and error["type"], error
    with pytest.raises(openai.BadRequestError):
        client.images.generate(prompt="x", size="huge")
    assert health(server)["status"] == "ok"
    # and it still serves: a small image is accepted
    small = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _tiny_png((40, 40))}},
                                                       {"type": "text", "text": "Color?"}]}], "max_tokens": 2}
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json=small, timeout=60).status_code == 200


def test_ctrl_c_stops_the_server_cleanly(server):
    # a request in flight when Ctrl-C comes either finishes or gets an error; the process exits 0 promptly
    outcome = {}

    def request():
        try:
            outcome["status"] = httpx.post(f"{server.base_url}/v1/images/generations",
                                           json={"prompt": PROMPT, "n": 4}, timeout=60).status_code
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=request)
    thread.start()
    assert server.stop(timeout=60) == 0
    thread.join(60)
    assert not thread.is_alive()
    assert outcome.get("status") in (200, 503) or "error" in outcome
