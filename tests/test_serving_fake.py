"""Protocol and scheduling cases against a fake engine (no model): batching by key and size, the bounded queue
(429), the timeout (504), an engine failure (500) that leaves the server serving, SSE framing, and the incremental
text of a streamed answer (whole characters only) with the fixture tokenizer."""

import threading
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from serving_helpers import ServerThread, png_array

from paddlemix.models.emu3 import Emu3Tokenizer
from paddlemix.serving import Engine, build_app
from paddlemix.serving.engine import ChatResult, _TextRow, png_bytes


class FakeJob:
    def __init__(self, kind, rows, key, payload):
        self.kind, self.rows, self.batch_key, self.payload = kind, rows, (kind, key), payload


class FakeEngine(Engine):
    """Images: one solid-colour PNG per row (colour = the prompt's length); chat: echoes the last user text in
    pieces. ``gate`` (an Event) holds every batch until set; prompts "fail" raise inside the batch."""

    image_model, chat_model = "fake-gen", "fake-chat"

    def __init__(self):
        self.batches = []
        self.gate = threading.Event()
        self.gate.set()

    def prepare_images(self, request):
        if request.prompt == "bad":
            raise ValueError("the fake engine rejects 'bad'")
        return FakeJob("image", request.n, request.sampling_params().key(), request.prompt)

    def prepare_chat(self, request):
        return FakeJob("chat", 1, request.sampling_params().key(), request.messages[-1].content)

    def fits(self, jobs):
        return True

    def run(self, jobs, context):
        self.batches.append([job.payload for job in jobs])
        self.gate.wait(30)
        if any(job.payload == "fail" for job in jobs):
            raise RuntimeError("the fake engine failed")
        results = []
        for j, job in enumerate(jobs):
            context.progress(j, 1, 1)
            if job.kind == "image":
                image = Image.new("RGB", (4, 4), (len(job.payload), 0, 0))
                results.append([png_bytes(image)] * job.rows)
            else:
                for piece in job.payload.split(" "):
                    context.delta(j, piece + " ")
                results.append(ChatResult(job.payload + " ", 3, len(job.payload.split(" ")), "stop"))
            context.check()
        return results


@pytest.fixture(scope="module")
def fake():
    engine = FakeEngine()
    server = ServerThread(build_app(engine, max_batch_size=4, max_queue=4, timeout=2.0, batch_wait=0.0, max_body_bytes=100_000))
    try:
        yield engine, server
    finally:
        engine.gate.set()
        server.stop()


@pytest.fixture
def client(fake):
    return openai.OpenAI(base_url=f"{fake[1].base_url}/v1", api_key="unused", max_retries=0, timeout=30)


def _concurrently(fn, args):
    results = [None] * len(args)

    def run(i):
        try:
            results[i] = fn(args[i])
        except Exception as exc:  # collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
        time.sleep(0.1)  # in order
    return threads, results


def test_waiting_requests_are_merged_by_key_up_to_the_batch_size(fake, client):
    engine, _ = fake
    engine.gate.clear()
    engine.batches.clear()
    # the first request occupies the worker; then 2-row, 1-row greedy, 2-row and 1-row requests wait
    prompts = [("p0", 1, 1), ("aa", 2, 2048), ("bbb", 1, 1), ("cccc", 2, 2048), ("ddddd", 1, 2048)]
    threads, results = _concurrently(
        lambda a: client.images.generate(prompt=a[0], n=a[1], extra_body={"top_k": a[2]}), prompts
    )
    time.sleep(0.3)
    engine.gate.set()
    for t in threads:
        t.join(30)
    # greedy and sampled never share a batch; the sampled ones merge up to 4 rows
    assert engine.batches == [["p0"], ["aa", "cccc"], ["bbb"], ["ddddd"]]
    for (prompt, n, _), result in zip(prompts, results):
        assert len(result.data) == n
        assert png_array(result.data[0].b64_json)[0, 0, 0] == len(prompt)


def test_a_full_queue_gets_429_and_a_slow_request_504(fake, client):
    engine, server = fake
    engine.gate.clear()
    threads, results = _concurrently(lambda p: client.images.generate(prompt=p), list("abcdefg"))
    for t in threads:
        t.join(30)
    engine.gate.set()
    errors = [type(r).__name__ for r in results]
    # "a" runs (and times out after 2 s), the next four wait (the queue holds 4) and time out too, the rest are
    # refused at once
    assert isinstance(results[-1], openai.RateLimitError), errors
    assert results[-1].body["code"] == "rate_limit_exceeded"
    assert all(isinstance(r, openai.APIStatusError) and r.status_code in (429, 504) for r in results), errors
    assert sum(r.status_code == 504 for r in results) >= 5, errors
    assert httpx.get(f"{server.base_url}/health").json()["status"] == "ok"
    assert client.images.generate(prompt="ok").data


def test_engine_failure_is_a_500_and_the_server_goes_on(fake, client):
    with pytest.raises(openai.InternalServerError):
        client.images.generate(prompt="fail")
    with pytest.raises(openai.BadRequestError, match="rejects"):
        client.images.generate(prompt="bad")
    assert client.images.generate(prompt="fine").data


def test_chat_stream_framing(fake, client):
    stream = client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "one two"}],
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two "
    assert chunks[-1].choices[0].finish_reason == "stop"
    with httpx.stream("POST", f"{fake[1].base_url}/v1/chat/completions",
                      json={"messages": [{"role": "user", "content": "x"}], "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert response.headers["content-type"].startswith("text/event-stream")


def test_a_body_over_the_limit_gets_413(fake):
    response = httpx.post(f"{fake[1].base_url}/v1/images/generations", json={"prompt": "x" * 200_000})
    assert response.status_code == 413 and "limit" in response.json()["error"]["message"]


def test_page_and_unknown_paths(fake):
    base = fake[1].base_url
    page = httpx.get(base + "/")
    assert page.status_code == 200 and "/v1/images/generations" in httpx.get(base + "/app.js").text
    missing = httpx.get(base + "/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["message"]


def test_streamed_text_holds_back_incomplete_characters(fixtures_dir):
    tokenizer = Emu3Tokenizer.from_pretrained(str(fixtures_dir / "tokenizer"))
    text = "caf\u00e9 \u20ac5 \u732b!"
    ids = tokenizer.encode(text)
    row = _TextRow(tokenizer, max_tokens=len(ids) + 5, eos_id=tokenizer.eos_token_id)
    pieces = [row.add(i) for i in ids] + [row.add(tokenizer.eos_token_id)]
    assert "".join(pieces) == text == row.text
    assert all("\ufffd" not in p for p in pieces)
    assert row.finish_reason == "stop"
    # the byte-level tokenizer splits the euro sign over several tokens: nothing is sent until it is whole
    euro = tokenizer.encode("\u20ac")
    assert len(euro) > 1
    row = _TextRow(tokenizer, max_tokens=10, eos_id=tokenizer.eos_token_id)
    assert [row.add(i) for i in euro] == [""] * (len(euro) - 1) + ["\u20ac"]
    # a budget cut inside a character flushes what there is, as the batch decode does
    row = _TextRow(tokenizer, max_tokens=1, eos_id=tokenizer.eos_token_id)
    assert row.add(euro[0]) == tokenizer.decode(euro[:1], skip_special_tokens=True) == "\ufffd"
    assert row.finish_reason == "length"
    np.testing.assert_array_equal(row.ids, euro[:1])


def test_serve_script_rejects_bad_arguments(fixtures_dir, capsys):
    import importlib.util

    from serving_helpers import SERVE

    spec = importlib.util.spec_from_file_location("serve_script", SERVE)
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    demo = str(fixtures_dir)
    args = serve.parse_args(["--demo", demo, "--port", "9000", "--max_batch_size", "4"])
    assert args.gen_model_path == args.chat_model_path == str(fixtures_dir / "llm") and args.max_batch_size == 4
    for argv, message in (
        ([], "--gen_model_path"),
        (["--demo", demo, "--port", "70000"], "--port"),
        (["--demo", demo, "--max_batch_size", "0"], "--max_batch_size"),
        (["--demo", demo, "--timeout", "0"], "--timeout"),
        (["--demo", str(fixtures_dir / "refs")], "no llm/"),
    ):
        with pytest.raises(SystemExit):
            serve.parse_args(argv)
        assert message in capsys.readouterr().err


def test_an_idle_scheduler_collects_a_burst_into_one_batch():
    import asyncio

    from paddlemix.serving import Scheduler

    engine = FakeEngine()
    scheduler = Scheduler(engine, max_batch_size=8, max_queue=8, timeout=30.0, batch_wait=0.2)
    loop = asyncio.new_event_loop()
    scheduler.start()
    try:
        states = []
        for i in range(3):  # 0.05 s apart: each arrives within batch_wait of the one before
            states.append(scheduler.submit(FakeJob("image", 1, "k", f"p{i}"), loop=loop))
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while not all(s.done for s in states) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.batches == [["p0", "p1", "p2"]]
        assert scheduler.snapshot()["batches"] == 1
    finally:
        scheduler.shutdown()
        loop.close()


def test_a_client_that_leaves_a_stream_cancels_its_request(fake):
    engine, server = fake
    before = httpx.get(f"{server.base_url}/health").json()["cancelled"]
    engine.gate.clear()
    try:
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "bye"}], "stream": True}) as response:
            first = next(response.iter_lines())
            assert first.startswith("data: ") and '"assistant"' in first
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.base_url}/health").json()["cancelled"] == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{server.base_url}/health").json()["cancelled"] == before + 1
    finally:
        engine.gate.set()
    assert httpx.get(f"{server.base_url}/health").json()["status"] == "ok"
