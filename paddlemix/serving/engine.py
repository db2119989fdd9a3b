"""The model-facing side of the server, behind the ``Engine`` interface (as vLLM's ``EngineClient``) so that tests
can swap in a fake.

``prepare_*`` checks a request and turns it into a job (host work only: tokenizing, decoding uploaded images; no
Paddle kernel), ``fits`` says whether jobs can share one ``generate``, and ``run`` executes one batch of compatible
jobs on the scheduler's worker thread, reporting per-job progress and text through the batch context.
"""

import abc
import base64
import binascii
import io
import re
import secrets
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from PIL import Image

from ..models.emu3.generation_emu3 import grid_length
from ..models.emu3.processing_emu3 import calculate_generate_size, parse_ratio
from ..models.emu3.streaming import TextStreamer
from .protocol import ChatCompletionRequest, ImageGenerationRequest, SamplingParams

_DATA_URI = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.ASCII)
_SIZE = re.compile(r"(\d+)x(\d+)")
_RATIO = re.compile(r"(\d+):(\d+)")


@dataclass
class ImageJob:
    """Text-to-image work: ``n`` rows of one prompt."""

    prompt_ids: np.ndarray  # [L]
    neg_ids: Optional[np.ndarray]  # [Ln]; None: guide against the prompt's last token
    grid: tuple  # (h, w) tokens
    n: int
    seeds: Optional[List[int]]  # one per row when sampling
    scale: Optional[float]  # None: no guidance
    sampling: SamplingParams
    kind: str = "image"

    @property
    def rows(self):
        return self.n

    @property
    def batch_key(self):
        return (self.kind, self.scale, self.sampling.key())

    @property
    def steps(self):
        return grid_length(*self.grid)

    @property
    def prompt_len(self):
        return max(len(self.prompt_ids), len(self.neg_ids) if self.neg_ids is not None else 1)


@dataclass
class ChatJob:
    """One answer: the conversation, its decoded images (encoded on the worker) and its token budget."""

    messages: list  # transformers-style messages, one {"type": "image"} item per image
    images: List[Image.Image]
    prompt_len: int
    max_tokens: int
    seed: Optional[int]
    sampling: SamplingParams
    kind: str = "chat"
    rows: int = 1

    @property
    def batch_key(self):
        return (self.kind, self.sampling.key())


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class Engine(abc.ABC):
    """What the scheduler and the routes need from a model backend."""

    image_model: Optional[str] = None  # the model id served by /v1/images/generations (None: not served)
    chat_model: Optional[str] = None  # the model id served by /v1/chat/completions

    @abc.abstractmethod
    def prepare_images(self, request: ImageGenerationRequest) -> ImageJob:
        """Check the request and build its job; ValueError for a bad request."""

    @abc.abstractmethod
    def prepare_chat(self, request: ChatCompletionRequest) -> ChatJob:
        """Check the request and build its job; ValueError for a bad request."""

    @abc.abstractmethod
    def fits(self, jobs) -> bool:
        """Whether the jobs (of one batch key) fit one ``generate`` (position budget)."""

    @abc.abstractmethod
    def run(self, jobs, context) -> list:
        """Run one batch; returns one result (or Exception) per job: a list of PNG bytes for an ImageJob, a
        ``ChatResult`` for a ChatJob. Reports ``context.progress``/``context.delta``; calls ``context.check()`` each
        step (it raises to stop the batch)."""


def decode_data_uri(url, max_bytes, max_pixels):
    """A PIL image from an ``image/*`` data URI of at most ``max_bytes`` (decoded) and ``max_pixels``; ValueError
    for anything else."""
    match = _DATA_URI.match(url)
    if not match:
        raise ValueError("image_url must be a data URI (data:image/png;base64,...); remote URLs are not fetched")
    mime = match.group("mime") or "text/plain"
    if not mime.startswith("image/"):
        raise ValueError(f"image_url is a data URI of type {mime!r}, not an image")
    if not match.group("b64"):
        raise ValueError("image_url data URIs must be base64 encoded (data:image/...;base64,...)")
    payload = url[match.end():]
    if len(payload) > (max_bytes * 4) // 3 + 4:
        raise ValueError(f"the image is larger than the server's limit of {max_bytes} bytes")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("image_url holds invalid base64 data") from None
    try:
        with Image.open(io.BytesIO(raw)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise ValueError(f"the image has {width}x{height} pixels, more than the server's limit of {max_pixels}")
            image = probe.convert("RGB")
    except (OSError, Image.DecompressionBombError, SyntaxError):
        raise ValueError("image_url holds data that is not a readable image") from None
    return image


def parse_size(size, default_area, max_area, spatial_factor):
    """(ratio "W:H", image_area) of an OpenAI ``size`` ("WxH" pixels) or an Emu3 ratio "W:H" (at the default area)."""
    if size is None or size == "auto":
        return "1:1", default_area
    if _SIZE.fullmatch(size):
        w, h = (int(v) for v in _SIZE.fullmatch(size).groups())
        if w <= 0 or h <= 0:
            raise ValueError(f"size {size!r}: width and height must be positive")
        area = w * h
        ratio = f"{w}:{h}"
    elif _RATIO.fullmatch(size):
        parse_ratio(size)
        ratio, area = size, default_area
    else:
        raise ValueError(f"size must be 'WxH' in pixels (e.g. '1024x1024') or an aspect ratio 'W:H', got {size!r}")
    if area > max_area:
        raise ValueError(f"size {size!r} asks for {area} pixels, more than the server's limit of {max_area}")
    calculate_generate_size(ratio, area, spatial_factor)
    return ratio, area


def chat_messages(messages):
    """(transformers-style messages, [image URLs in order]) of OpenAI chat messages."""
    converted, urls = [], []
    for message in messages:
        parts = message.content if isinstance(message.content, list) else [message.content]
        content = []
        for part in parts:
            if isinstance(part, str):
                content.append({"type": "text", "text": part})
            elif part.type == "text":
                content.append({"type": "text", "text": part.text})
            else:
                content.append({"type": "image"})
                urls.append(part.image_url.url)
        converted.append({"role": message.role, "content": content})
    if converted[-1]["role"] != "user":
        raise ValueError("the last message must be a user message")
    return converted, urls


def random_seed():
    return secrets.randbits(63)


class _BatchStreamer:
    """``generate``'s streamer for a batch: per step, the new token of every row, turned into per-job progress
    (images) or text deltas and early results (chat)."""

    def __init__(self, on_step):
        self.on_step = on_step
        self.step = 0

    def put(self, ids):
        ids = np.asarray(ids.numpy() if hasattr(ids, "numpy") else ids)
        if ids.ndim == 2:  # the prompts, given once before the first step
            return
        self.on_step(self.step, ids)
        self.step += 1

    def end(self):
        pass


class _TextRow:
    """One chat row's answer: its ids up to eos or its token budget, and its text streamed in whole characters
    (``streaming.TextStreamer``: the pieces joined equal the decode of the ids)."""

    def __init__(self, tokenizer, max_tokens, eos_id):
        self.max_tokens, self.eos_id = max_tokens, eos_id
        self.ids, self.pieces, self.finish_reason = [], [], None
        self._stream = TextStreamer(tokenizer, skip_prompt=False, callback=self.pieces.append)

    def add(self, token):
        """The new text after ``token`` ("" while a character is incomplete); eos or the budget finishes the row."""
        start = len(self.pieces)
        if token == self.eos_id:
            self._end("stop")
        else:
            self.ids.append(int(token))
            self._stream.put(np.asarray([token], np.int64))
            if len(self.ids) >= self.max_tokens:
                self._end("length")
        return "".join(self.pieces[start:])

    def close(self):
        """Finish a row whose generation ended before its eos or budget; the last text."""
        start = len(self.pieces)
        self._end("length")
        return "".join(self.pieces[start:])

    def _end(self, reason):
        self.finish_reason = reason
        self._stream.end()

    @property
    def text(self):
        return "".join(self.pieces)


def _left_pad(rows, pad_id):
    """[B, L] ids and mask of 1-D id arrays, left-padded to the longest."""
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), pad_id, np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = r
        mask[i, length - len(r):] = 1
    return ids, mask


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Emu3Engine(Engine):
    """Emu3 behind the engine interface: a generation model, a chat model, or both, sharing one processor.

    gen_model / chat_model: ``Emu3ForCausalLM`` (or None); processor: an ``Emu3Processor``.
    Limits: ``max_image_area`` (pixels of a generated image; default the model's image_area), ``max_tokens``
    (answer tokens), ``max_image_bytes`` / ``max_image_pixels`` (an uploaded image's size), ``max_images`` per chat
    request.
    """

    def __init__(self, processor, gen_model=None, chat_model=None, image_model_id="emu3-gen",
                 chat_model_id="emu3-chat", max_image_area=None, max_tokens=1024, max_image_bytes=20 * 2**20,
                 max_image_pixels=4096 * 4096, max_images=4):
        if gen_model is None and chat_model is None:
            raise ValueError("Emu3Engine needs a generation model, a chat model, or both")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.gen_model, self.chat_model_obj = gen_model, chat_model
        self.image_model = image_model_id if gen_model is not None else None
        self.chat_model = chat_model_id if chat_model is not None else None
        default_area = gen_model.config.image_area if gen_model is not None else processor.image_area
        self.default_area = default_area
        self.max_image_area = max_image_area or default_area
        self.max_tokens = max_tokens
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.max_images = max_images

    # ---- images ----------------------------------------------------------------------------------------------

    def prepare_images(self, request):
        if self.gen_model is None:
            raise LookupError("this server has no image generation model")
        config = self.gen_model.config
        ratio, area = parse_size(request.size, self.default_area, self.max_image_area, self.processor.spatial_factor)
        kwargs = dict(mode="G", ratio=ratio, image_area=area, return_tensors="np")
        inputs = self.processor([request.prompt + request.positive_prompt], **kwargs)
        grid = tuple(int(v) for v in inputs["image_size"][0])
        scale = request.guidance_scale if request.guidance_scale != 1.0 else None
        neg_ids = None
        if scale is not None and request.negative_prompt:
            neg_ids = np.asarray(self.processor([request.negative_prompt], **kwargs)["input_ids"][0])
        sampling = request.sampling_params()
        seeds = None
        if sampling.do_sample:
            first = request.seed if request.seed is not None else random_seed()
            seeds = [(first + i) % 2**63 for i in range(request.n)]
        job = ImageJob(np.asarray(inputs["input_ids"][0]), neg_ids, grid, request.n, seeds, scale, sampling)
        if job.prompt_len + job.steps > config.max_position_embeddings:
            raise ValueError(
                f"the prompt ({job.prompt_len} tokens) and the {grid[0]}x{grid[1]} image ({job.steps} tokens) exceed "
                f"the model's {config.max_position_embeddings} positions: shorten the prompt or ask for a smaller size"
            )
        return job

    def _run_images(self, jobs, context):
        config = self.gen_model.config
        rows, neg_rows, sizes, seeds, owner = [], [], [], [], []
        for j, job in enumerate(jobs):
            for r in range(job.n):
                rows.append(job.prompt_ids)
                neg_rows.append(job.neg_ids if job.neg_ids is not None else job.prompt_ids[-1:])
                sizes.append(job.grid)
                seeds.append(job.seeds[r] if job.seeds else 0)
                owner.append(j)
        ids, mask = _left_pad(rows, config.pad_token_id)
        neg_ids, neg_mask = _left_pad(neg_rows, config.pad_token_id)
        totals = [job.steps for job in jobs]

        def on_step(step, tokens):
            for j, total in enumerate(totals):
                if step < total:
                    context.progress(j, step + 1, total)
            context.check()

        first = jobs[0]
        sampling = first.sampling
        out = self.gen_model.generate(
            ids,
            attention_mask=mask,
            negative_prompt_ids=neg_ids if first.scale is not None else None,
            negative_prompt_attention_mask=neg_mask if first.scale is not None else None,
            guidance_scale=first.scale,
            image_size=np.asarray(sizes, np.int64),
            do_sample=sampling.do_sample,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            temperature=sampling.temperature,
            seed=seeds if sampling.do_sample else None,
            progress=False,
            streamer=_BatchStreamer(on_step),
        )
        decoded = self.processor.batch_decode(out.numpy())
        results = [[] for _ in jobs]
        for j, pieces in zip(owner, decoded):
            images = [p for p in (pieces if isinstance(pieces, list) else [pieces]) if isinstance(p, Image.Image)]
            if not images:
                results[j] = RuntimeError("the model generated no image")
            elif isinstance(results[j], list):
                results[j].append(png_bytes(images[0]))
        return results

    # ---- chat ------------------------------------------------------------------------------------------------

    def prepare_chat(self, request):
        if self.chat_model_obj is None:
            raise LookupError("this server has no chat model")
        config = self.chat_model_obj.config
        messages, urls = chat_messages(request.messages)
        if len(urls) > self.max_images:
            raise ValueError(f"got {len(urls)} images; the server takes at most {self.max_images} per request")
        prompt = self.processor.apply_chat_template(messages)
        images = [decode_data_uri(url, self.max_image_bytes, self.max_image_pixels) for url in urls]
        # the prompt's length before the images are encoded (on the worker): same grids, codes all 0
        f = self.processor.spatial_factor
        grids = []
        for image in images:
            pixels = self.processor.image_processor(image, return_tensors="np")["pixel_values"]
            grids.append(np.zeros((pixels.shape[-2] // f, pixels.shape[-1] // f), np.int64))
        text = self.processor.expand_image_placeholders(prompt, grids)
        prompt_len = len(self.tokenizer.encode(self.tokenizer.bos_token + text))
        budget = request.token_budget()
        room = config.max_position_embeddings - prompt_len
        if room < 1:
            raise ValueError(
                f"the prompt is {prompt_len} tokens, which leaves no room for an answer within the model's "
                f"{config.max_position_embeddings} positions"
            )
        if budget is not None and budget > self.max_tokens:
            raise ValueError(f"max_tokens {budget} is above the server's limit of {self.max_tokens}")
        max_tokens = min(budget or self.max_tokens, room)
        sampling = request.sampling_params()
        seed = (request.seed if request.seed is not None else random_seed()) if sampling.do_sample else None
        return ChatJob(messages, images, prompt_len, max_tokens, seed, sampling)

    def _chat_ids(self, job):
        """The prompt ids [L] of a chat job, its images encoded one by one (no padding across requests)."""
        inputs = self.processor.apply_chat_template(job.messages, tokenize=True, images=job.images, return_tensors="np")
        return np.asarray(inputs["input_ids"][0], np.int64)

    def _run_chat(self, jobs, context):
        config = self.chat_model_obj.config
        results = [None] * len(jobs)
        live, rows = [], []  # the jobs whose prompt could be built (a failing one fails alone), their prompt ids
        for j, job in enumerate(jobs):
            try:
                rows.append(self._chat_ids(job))
                live.append(j)
            except ValueError as exc:
                results[j] = exc
        if not live:
            return results
        ids, mask = _left_pad(rows, config.pad_token_id)
        texts = [_TextRow(self.tokenizer, jobs[j].max_tokens, config.eos_token_id) for j in live]

        def on_step(step, tokens):
            for r, (j, row) in enumerate(zip(live, texts)):
                if row.finish_reason is not None:
                    continue
                delta = row.add(int(tokens[r]))
                if delta:
                    context.delta(j, delta)
                if row.finish_reason is not None:
                    results[j] = self._chat_result(rows[r], row)
                    context.finish(j, results[j])
            context.check()

        sampling = jobs[0].sampling
        self.chat_model_obj.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=max(jobs[j].max_tokens for j in live),
            do_sample=sampling.do_sample,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            temperature=sampling.temperature,
            seed=[jobs[j].seed for j in live] if sampling.do_sample else None,
            progress=False,
            streamer=_BatchStreamer(on_step),
        )
        for r, (j, row) in enumerate(zip(live, texts)):
            if results[j] is None:
                delta = row.close()
                if delta:
                    context.delta(j, delta)
                results[j] = self._chat_result(rows[r], row)
        return results

    @staticmethod
    def _chat_result(prompt, row):
        return ChatResult(row.text, len(prompt), len(row.ids), row.finish_reason)

    # ---- batches ---------------------------------------------------------------------------------------------

    def fits(self, jobs):
        if jobs[0].kind == "image":
            config = self.gen_model.config
            return max(j.prompt_len for j in jobs) + max(j.steps for j in jobs) <= config.max_position_embeddings
        config = self.chat_model_obj.config
        return max(j.prompt_len for j in jobs) + max(j.max_tokens for j in jobs) <= config.max_position_embeddings

    def run(self, jobs, context):
        if jobs[0].kind == "image":
            return self._run_images(jobs, context)
        return self._run_chat(jobs, context)
