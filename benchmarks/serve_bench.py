"""The ``serve`` case of our worker: the OpenAI-compatible server (paddlemix.serving, uvicorn in a thread of the
worker) under client-side load, as vLLM's benchmark_serving measures it.

``job_serve``: N text-to-image requests (the t2i script's defaults: guidance 3.0, the official negative prompt,
top-k sampling, one seed per request) sent either all at once (``mode`` "concurrent": the scheduler batches them)
or one at a time ("sequential"). Latency is each request's wall time from the client's send to its last byte;
throughput is N images over the wall time from the first send to the last answer. The images are saved to
``images_path`` (.npz), so run.py can check that batching changed none of them.
"""

import base64
import io
import os
import socket
import threading
import time

import numpy as np

PROMPTS = ["a portrait of young girl.", "a shiba inu", "a red bicycle by the sea", "mountains at dawn"]


def write_tokenizer(path, codebook_size):
    """A byte-level Emu3 tokenizer folder (256 byte ranks, the special tokens, ``codebook_size`` visual tokens)
    whose ids match ``serve_lm_config``."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "emu3.tiktoken"), "w", encoding="ascii") as f:
        for i in range(256):
            f.write(f"{base64.b64encode(bytes([i])).decode('ascii')} {i}\n")
    with open(os.path.join(path, "emu3_vision_tokens.txt"), "w", encoding="ascii") as f:
        f.write("<|image token|>\n<|image start|>\n<|image end|>\n")
        for i in range(codebook_size):
            f.write(f"<|visual token {i:06d}|>\n")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def job_serve(job):
    import httpx
    import uvicorn

    from paddlemix.models.emu3 import Emu3Processor, Emu3Tokenizer, Emu3VisionVQImageProcessor, Emu3VisionVQModel
    from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM
    from paddlemix.serving import Emu3Engine, build_app

    height, width = job["serve_grid"]
    area = height * width * 64
    write_tokenizer(job["tokenizer_dir"], job["codebook_size"])
    tokenizer = Emu3Tokenizer.from_pretrained(job["tokenizer_dir"])
    vq = Emu3VisionVQModel.from_pretrained(job["vq_dir"])
    model = Emu3ForCausalLM.from_pretrained(job["orig_dir"])
    processor = Emu3Processor(Emu3VisionVQImageProcessor(), vq, tokenizer, image_area=area)
    engine = Emu3Engine(processor, gen_model=model, max_image_area=area)
    n = job["serve_requests"]
    app = build_app(engine, max_batch_size=n, max_queue=n + 1, timeout=24 * 3600.0)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=None) as client:
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            bodies = [{"prompt": PROMPTS[i % len(PROMPTS)], "size": f"{width * 8}x{height * 8}", "seed": i,
                       "top_k": job["top_k"]} for i in range(n)]
            client.post("/v1/images/generations", json=dict(bodies[0], seed=n)).raise_for_status()  # warm-up
            before = client.get("/health").json()["batches"]
            latencies, images = [None] * n, [None] * n

            def send(i):
                t0 = time.perf_counter()
                response = client.post("/v1/images/generations", json=bodies[i])
                response.raise_for_status()
                latencies[i] = time.perf_counter() - t0
                images[i] = response.json()["data"][0]["b64_json"]

            start = time.perf_counter()
            if job["mode"] == "concurrent":
                threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            else:
                for i in range(n):
                    send(i)
            wall = time.perf_counter() - start
            batches = client.get("/health").json()["batches"] - before
    finally:
        server.should_exit = True
        thread.join(60)
    if any(latency is None for latency in latencies):
        raise RuntimeError("some requests failed")
    from PIL import Image

    np.savez(job["images_path"], *[np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in images])
    return {"images/s": n / wall, "p50": _percentile(latencies, 50), "p95": _percentile(latencies, 95),
            "batches": batches, "wall": wall, "images_path": job["images_path"], "requests": n}

