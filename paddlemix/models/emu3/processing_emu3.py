"""The Emu3 processor: builds the text-to-image ("G") and understanding ("U") prompts, and turns generated ids back
into text pieces and PIL images."""

import logging
import math
import re

import numpy as np
from PIL import Image

from .chat_template import DEFAULT_SYSTEM_PROMPT, chat_images, render_chat
from .configuration_emu3 import Emu3Config
from .hf_layout import resolve_model_paths
from .image_processing_emu3visionvq import Emu3VisionVQImageProcessor
from .modeling_emu3visionvq import Emu3VisionVQModel
from .token_ids import check_token_ids
from .tokenization_emu3 import BatchEncoding, Emu3Tokenizer, ids_to_array, to_tensor

logger = logging.getLogger(__name__)

DEFAULT_CHAT_TEMPLATE = "You are a helpful assistant. USER: {image_prompt}{text_prompt}. ASSISTANT:"
# Emu3-Stage1 (the pretrained base model) takes the image and the text with no chat around them (original README)
STAGE1_CHAT_TEMPLATE = "{image_prompt}{text_prompt}"
DEFAULT_PREFIX_TEMPLATE = "{H}*{W}"
DEFAULT_VISUAL_TEMPLATE = ("<|visual token {token_id:0>6d}|>", r"<\|visual token (\d+)\|>")
DEFAULT_IMAGE_AREA = 518400


def parse_ratio(ratio):
    """``(w, h)`` from a "W:H" string of two positive integers; ValueError otherwise."""
    if not isinstance(ratio, str):
        raise ValueError(f"ratio must be a 'W:H' string such as '16:9', got {ratio!r}")
    parts = ratio.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"ratio must be 'W:H' with two positive integers (e.g. '16:9'), got {ratio!r}")
    w, h = (int(p) for p in parts)
    if w <= 0 or h <= 0:
        raise ValueError(f"ratio {ratio!r}: width and height must both be positive")
    return w, h


def calculate_generate_size(ratio, image_area, spatial_factor):
    """Token grid ``(h, w)`` for a "W:H" ratio and a pixel area, rounded half to even as the original does."""
    w, h = parse_ratio(ratio)
    target_ratio = (image_area / (h * w)) ** 0.5
    th = int(round(h * target_ratio / spatial_factor))
    tw = int(round(w * target_ratio / spatial_factor))
    if th <= 0 or tw <= 0:
        raise ValueError(
            f"ratio {ratio!r} with image_area {image_area} gives an empty token grid {th}x{tw} "
            f"(spatial factor {spatial_factor}); use a larger image_area or a less extreme ratio"
        )
    return th, tw


class Emu3Processor:
    """Prepares Emu3 inputs from text and PIL images, and decodes Emu3 outputs.

    Args:
        image_processor: an ``Emu3VisionVQImageProcessor`` (needed for mode "U" and for decoding images).
        vision_tokenizer: an ``Emu3VisionVQModel`` (its config gives the spatial factor and codebook size).
        tokenizer: an ``Emu3Tokenizer``.
        chat_template: the understanding prompt, with ``{image_prompt}`` and ``{text_prompt}``
            (``STAGE1_CHAT_TEMPLATE`` for Emu3-Stage1).
        prefix_template: the grid size text after ``<|image start|>``, with ``{H}`` and ``{W}``.
        visual_template: ``(format string of a visual token with {token_id}, regex of it)``.
        image_area: the default pixel area of a generated image (the LM config's ``image_area``).
    """

    def __init__(
        self,
        image_processor=None,
        vision_tokenizer=None,
        tokenizer=None,
        chat_template=DEFAULT_CHAT_TEMPLATE,
        prefix_template=DEFAULT_PREFIX_TEMPLATE,
        visual_template=DEFAULT_VISUAL_TEMPLATE,
        image_area=DEFAULT_IMAGE_AREA,
    ):
        if vision_tokenizer is None:
            raise ValueError("Emu3Processor needs vision_tokenizer (an Emu3VisionVQModel)")
        if tokenizer is None:
            raise ValueError("Emu3Processor needs tokenizer (an Emu3Tokenizer)")
        self.image_processor = image_processor
        self.vision_tokenizer = vision_tokenizer
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.prefix_template = prefix_template
        self.visual_template = visual_template
        self.image_area = image_area
        self.spatial_factor = vision_tokenizer.config.spatial_factor
        self.codebook_size = vision_tokenizer.config.codebook_size

        # visual token strings (built once) and their ids, which must be contiguous: first id + code
        self.visual_token_strings = [visual_template[0].format(token_id=i) for i in range(self.codebook_size)]
        for token in (self.visual_token_strings[0], self.visual_token_strings[-1]):
            if token not in tokenizer.special_tokens:
                raise ValueError(
                    f"the tokenizer has no visual token {token!r}: it does not match a vision tokenizer with "
                    f"codebook_size {self.codebook_size}"
                )
        ids = np.asarray(tokenizer.convert_tokens_to_ids(self.visual_token_strings))
        self.visual_token_start = int(ids[0])
        if not np.array_equal(ids, self.visual_token_start + np.arange(self.codebook_size)):
            raise ValueError("the tokenizer's visual token ids are not contiguous in code order")
        self._prefix_regex = re.compile(
            re.escape(prefix_template).replace(r"\{H\}", r"(?P<H>\d+)").replace(r"\{W\}", r"(?P<W>\d+)")
        )

    @classmethod
    def from_pretrained(cls, model_path, vq_model_path=None, tokenizer_path=None, image_area=None, dtype=None):
        """Image processor, vision tokenizer and tokenizer of one model.

        An ``-hf`` folder (transformers' layout) holds all three; for the original layout the tokenizer comes from
        ``model_path`` (``BAAI/Emu3-Gen``) and the vision tokenizer from ``vq_model_path`` (default
        ``BAAI/Emu3-VisionTokenizer``). ``image_area`` defaults to the model config's (518400 for an -hf config,
        which has none; see ``hf_layout``). ``dtype`` is the vision tokenizer's.
        """
        vq_model_path, tokenizer_path = resolve_model_paths(model_path, vq_model_path, tokenizer_path)
        if image_area is None:
            image_area = Emu3Config.from_pretrained(model_path).image_area
        return cls(
            Emu3VisionVQImageProcessor.from_pretrained(vq_model_path),
            Emu3VisionVQModel.from_pretrained(vq_model_path, dtype=dtype),
            Emu3Tokenizer.from_pretrained(tokenizer_path),
            image_area=image_area,
        )

    def __call__(
        self,
        text,
        image=None,
        *,
        mode="G",
        ratio="1:1",
        image_area=None,
        padding_image=False,
        chat_template=None,
        return_tensors="pd",
        padding="longest",
        return_token_type_ids=False,
        **tokenizer_kwargs,
    ):
        """Build the prompts (see ``build_prompts``) and tokenize them as one batch.

        ``padding``, ``return_token_type_ids`` and other keyword arguments go to the tokenizer (left padding by
        default).

        Returns:
            ``BatchEncoding`` with ``input_ids`` and ``attention_mask`` ``[B, L]`` and ``image_size`` ``[B, 2]``
            (token grid h, w), as ``return_tensors`` asks ("pd", "np" or None).
        """
        prompts, sizes = self.build_prompts(
            text, image, mode=mode, ratio=ratio, image_area=image_area, padding_image=padding_image,
            chat_template=chat_template,
        )
        return self._tokenize(prompts, sizes, return_tensors, padding, return_token_type_ids, **tokenizer_kwargs)

    def _tokenize(self, prompts, sizes, return_tensors, padding, return_token_type_ids, **tokenizer_kwargs):
        inputs = self.tokenizer(
            prompts,
            padding=padding,
            return_tensors=return_tensors,
            return_token_type_ids=return_token_type_ids,
            **tokenizer_kwargs,
        )
        inputs["image_size"] = to_tensor(np.asarray(sizes, dtype=np.int64), return_tensors)
        return BatchEncoding(inputs)

    def build_prompts(
        self, text, image=None, *, mode="G", ratio="1:1", image_area=None, padding_image=False, chat_template=None
    ):
        """The prompt strings and token grids ``[(h, w), ...]`` of a batch.

        Mode "G" (text-to-image): ``bos + text + boi + "{h}*{w}" + img`` per prompt, where ``(h, w)`` is the token
        grid for ``ratio`` ("W:H"; one string for all prompts or one per prompt) and ``image_area`` (default: the
        processor's ``image_area``), rounded half to even as the original.
        Mode "U" (understanding): ``bos + chat_template`` (default: the processor's; ``STAGE1_CHAT_TEMPLATE`` for
        Emu3-Stage1) with ``{text_prompt}`` the text and ``{image_prompt}`` the image prompt (``image_prompt``:
        ``boi + "{h}*{w}" + img + rows of visual tokens joined by eol + eol + eof + eoi``); one PIL image per text,
        or ``image=None`` for text-only questions (empty image prompt, grid (0, 0)).
        Texts holding ``<image>`` placeholders (transformers' style, e.g. from ``apply_chat_template``) are whole
        prompts: ``bos + text`` with each placeholder replaced by the image prompt of the next image (``image`` lists
        the images of all texts in order; see ``expand_image_placeholders``); a row's grid is its first image's.
        ``padding_image`` pads images of different sizes to a common size before encoding them as one batch
        (the original's behaviour, which changes codes near the padded border); see ``tokenize_image``.

        Raises ValueError for an empty prompt, a malformed ratio, a mode "G" call with images, a mode "U" call
        whose images do not match the texts (one entry per text, one image per placeholder), or a ratio count that
        is neither 1 nor the number of prompts.
        """
        texts = self._check_texts(text, allow_empty=mode == "U" and image is not None)
        if mode not in ("G", "U"):
            raise ValueError(f"mode must be 'G' (generation) or 'U' (understanding), got {mode!r}")
        tok = self.tokenizer
        prompts, sizes = [], []
        if mode == "G":
            if image is not None:
                raise ValueError("mode 'G' (text-to-image) takes no image; use mode 'U' to ask about an image")
            if not isinstance(ratio, (str, list, tuple)):
                raise ValueError(f"ratio must be a 'W:H' string or a list of them, got {ratio!r}")
            ratios = [ratio] if isinstance(ratio, str) else list(ratio)
            if len(ratios) == 1:
                ratios = ratios * len(texts)
            if len(ratios) != len(texts):
                raise ValueError(f"got {len(ratios)} ratios for {len(texts)} prompts: pass one ratio or one per prompt")
            area = self.image_area if image_area is None else image_area
            if isinstance(area, bool) or not isinstance(area, (int, float)) or not 0 < area < math.inf:
                raise ValueError(f"image_area must be a positive number of pixels, got {area!r}")
            for text_prompt, r in zip(texts, ratios):
                h, w = calculate_generate_size(r, area, self.spatial_factor)
                prompts.append(
                    tok.bos_token + text_prompt + tok.boi_token + self.prefix_template.format(H=h, W=w) + tok.img_token
                )
                sizes.append((h, w))
        elif any(tok.image_token in t for t in texts):
            counts = [t.count(tok.image_token) for t in texts]
            if not all(counts):
                raise ValueError(f"either every text holds {tok.image_token} placeholders or none does; got {counts}")
            images = self._check_images(image, sum(counts), per="placeholder")
            grids = self.tokenize_image(images, padding_image=padding_image)
            for text_prompt, end in zip(texts, np.cumsum(counts)):
                own = grids[end - text_prompt.count(tok.image_token): end]
                prompts.append(tok.bos_token + self.expand_image_placeholders(text_prompt, own))
                sizes.append(own[0].shape)
        else:
            template = self.chat_template if chat_template is None else chat_template
            if image is None:  # text-only questions
                images, grids = [None] * len(texts), [np.zeros((0, 0), np.int64)] * len(texts)
            else:
                images = self._check_images(image, len(texts))
                grids = self.tokenize_image(images, padding_image=padding_image)
            for text_prompt, im, codes in zip(texts, images, grids):
                image_prompt = self.image_prompt(codes) if im is not None else ""
                prompts.append(tok.bos_token + template.format(image_prompt=image_prompt, text_prompt=text_prompt))
                sizes.append(codes.shape)
        return prompts, sizes

    def image_prompt(self, codes):
        """The prompt text of one image's code grid ``[h, w]``: ``boi + "{h}*{w}" + img + rows of visual tokens
        joined by eol + eol + eof + eoi``."""
        tok = self.tokenizer
        h, w = np.shape(codes)
        return (
            tok.boi_token
            + self.prefix_template.format(H=h, W=w)
            + tok.img_token
            + self.codes_to_string(codes)
            + tok.eol_token
            + tok.eof_token
            + tok.eoi_token
        )

    def expand_image_placeholders(self, text, grids):
        """``text`` with its ``<image>`` placeholders (transformers' style; ``tokenizer.image_token``) replaced, in
        order, by the image prompts of ``grids`` (one code grid per placeholder).

        transformers expands each placeholder to ``h * (w + 1)`` ``<image>`` tokens that its model replaces by the
        codes; the ids the model sees are those of this text, so prompts match the original's ids exactly.
        """
        parts = text.split(self.tokenizer.image_token)
        if len(parts) - 1 != len(grids):
            raise ValueError(
                f"the text holds {len(parts) - 1} {self.tokenizer.image_token} placeholders for {len(grids)} images: "
                "give one placeholder per image"
            )
        return parts[0] + "".join(self.image_prompt(g) + part for g, part in zip(grids, parts[1:]))

    @staticmethod
    def _check_texts(text, allow_empty=False):
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not texts:
            raise ValueError("text must be a str or a non-empty list of str")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"text[{i}] must be a str, got {type(t).__name__}")
            if not t and not allow_empty:
                raise ValueError(f"text[{i}] is an empty prompt")
        return list(texts)

    @staticmethod
    def _check_images(image, n_wanted, per="text"):
        if image is None:
            raise ValueError(f"mode 'U' (understanding) needs an image: pass one PIL image per {per}")
        images = [image] if isinstance(image, Image.Image) else image
        if not isinstance(images, (list, tuple)) or not all(isinstance(im, Image.Image) for im in images):
            raise ValueError("image must be a PIL.Image.Image or a list of them")
        if len(images) != n_wanted:
            raise ValueError(f"got {len(images)} images for {n_wanted} {per}s: pass exactly one image per {per}")
        return list(images)

    def apply_chat_template(
        self,
        conversation,
        add_generation_prompt=True,
        tokenize=False,
        images=None,
        system_prompt=DEFAULT_SYSTEM_PROMPT,
        padding_image=False,
        return_tensors="pd",
        padding="longest",
        return_token_type_ids=False,
        **tokenizer_kwargs,
    ):
        """Render transformers-style messages in the Emu3-Chat format (see ``chat_template.py``).

        ``conversation`` is a list of ``{"role": "system"|"user"|"assistant", "content": str | [{"type": "image"},
        {"type": "text", "text": ...}]}`` messages, or a list of such conversations (a batch). ``system_prompt`` is
        used when a conversation has no system message (None or "": no system prompt). A single turn with the
        default system prompt gives the original's prompt token for token.

        With ``tokenize=False`` (transformers' default) the prompt string(s), ``<image>`` marking each image, no bos
        (``processor(prompts, images, mode="U")`` takes them as whole prompts). With ``tokenize=True`` the model
        inputs as ``processor(...)`` returns them (bos, every image's tokens in place of its ``<image>``; a row's
        ``image_size`` is its first image's grid, (0, 0) without one); the images are the image items' ``"image"``
        entries (PIL), or else ``images`` (a list of PIL images for one conversation, one list per conversation for
        a batch), encoded in one ``tokenize_image`` call (``padding_image`` as there).
        """
        batched = isinstance(conversation, (list, tuple)) and bool(conversation) and isinstance(
            conversation[0], (list, tuple)
        )
        conversations = list(conversation) if batched else [conversation]
        tok = self.tokenizer
        prompts = [render_chat(c, system_prompt, add_generation_prompt, image_token=tok.image_token)
                   for c in conversations]
        if not tokenize:
            return prompts if batched else prompts[0]
        rows = [chat_images(c) for c in conversations]
        if any(im is not None for row in rows for im in row):
            if any(im is None for row in rows for im in row):
                raise ValueError("either every image item carries its 'image' or none does (then pass images=)")
        elif images is not None:
            rows = list(images) if batched else [images]
        else:
            rows = [[] for _ in conversations]
        if len(rows) != len(conversations):
            raise ValueError(f"images: got {len(rows)} lists for {len(conversations)} conversations")
        rows = [[r] if isinstance(r, Image.Image) else r for r in rows]
        for i, (prompt, row) in enumerate(zip(prompts, rows)):
            n = prompt.count(tok.image_token)
            pil = isinstance(row, (list, tuple)) and all(isinstance(im, Image.Image) for im in row)
            if not pil or n != len(row):
                raise ValueError(f"conversation {i} has {n} images: give a list of {n} PIL images for it")
        grids = iter(self.tokenize_image([im for row in rows for im in row], padding_image=padding_image))
        full, sizes = [], []
        for prompt, row in zip(prompts, rows):
            own = [next(grids) for _ in row]
            full.append(tok.bos_token + self.expand_image_placeholders(prompt, own))
            sizes.append(own[0].shape if own else (0, 0))
        return self._tokenize(full, sizes, return_tensors, padding, return_token_type_ids, **tokenizer_kwargs)

    def codes_to_string(self, codes):
        """The visual-token text of a code grid ``[h, w]``: each row's tokens, rows joined by eol."""
        strings = self.visual_token_strings
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise ValueError(f"codes must be a [h, w] grid, got shape {list(codes.shape)}")
        check_token_ids(codes, self.codebook_size, "codes")
        return self.tokenizer.eol_token.join("".join([strings[c] for c in row]) for row in codes.tolist())

    def tokenize_image(self, images, padding_image=False):
        """Code grids (numpy int64 ``[h, w]``, one per image) of PIL images.

        Images of the same processed size are encoded together as one batch. With ``padding_image=True``, images
        of different sizes are zero-padded (in normalized pixel space, right and bottom) to the largest height and
        width, encoded as one batch, and each grid is cropped back to ``ceil(H / f) x ceil(W / f)``.
        """
        if self.image_processor is None:
            raise ValueError("this Emu3Processor has no image_processor: it cannot encode images")
        images = [images] if isinstance(images, Image.Image) else list(images)
        if not images:
            return []
        pixels = [np.asarray(self.image_processor(im, return_tensors="np")["pixel_values"])[0] for im in images]
        shapes = [p.shape[-2:] for p in pixels]
        if padding_image and len(set(shapes)) > 1:
            max_h = max(s[0] for s in shapes)
            max_w = max(s[1] for s in shapes)
            batch = np.zeros((len(pixels), pixels[0].shape[0], max_h, max_w), dtype=pixels[0].dtype)
            for i, p in enumerate(pixels):
                batch[i, :, : p.shape[1], : p.shape[2]] = p
            codes = self._encode(batch)
            f = self.spatial_factor
            return [codes[i, : math.ceil(h / f), : math.ceil(w / f)] for i, (h, w) in enumerate(shapes)]
        grids = [None] * len(images)
        for shape in dict.fromkeys(shapes):
            index = [i for i, s in enumerate(shapes) if s == shape]
            codes = self._encode(np.stack([pixels[i] for i in index]))
            for row, i in enumerate(index):
                grids[i] = codes[row]
        return grids

    def _encode(self, pixel_values):
        """Codes (numpy int64 ``[B, h, w]``) of normalized pixels ``[B, 3, H, W]`` in one vision tokenizer call."""
        return self.vision_tokenizer.encode(pixel_values).numpy().astype(np.int64)

    def decode(self, token_ids, skip_special_tokens=False):
        """Text pieces and PIL images of one sequence, in order.

        An image is the run of visual tokens between ``<|image start|>`` and ``<|image end|>`` (rows split by the
        eol token; the ``"{h}*{w}"`` prefix and the eof token are not part of it); it is decoded by the vision
        tokenizer and postprocessed by the image processor. As the original, the result is a list when there are
        several pieces and the piece itself when there is one ("" for an empty sequence).

        A sequence cut short (an image with no ``<|image end|>``) gives a partial image made of its complete rows:
        a shorter last row is dropped (with a warning); a cut image with no complete row stays as its text.
        A complete image whose rows differ in length, or that holds no visual token, raises ValueError.
        With ``skip_special_tokens=True`` every special and visual token is dropped, so the result is text only.
        """
        return self.batch_decode([token_ids], skip_special_tokens=skip_special_tokens)[0]

    def batch_decode(self, sequences, skip_special_tokens=False):
        """``decode`` of each sequence; images of the same grid size are decoded together in one batch."""
        if hasattr(sequences, "numpy"):
            sequences = sequences.numpy()
        docs = [self._split_pieces(ids_to_array(ids), skip_special_tokens) for ids in sequences]
        grids = [piece for doc in docs for piece in doc if isinstance(piece, np.ndarray)]
        images = self._decode_grids(grids)
        results = []
        for doc in docs:
            pieces = [images[id(p)] if isinstance(p, np.ndarray) else p for p in doc]
            results.append(pieces if len(pieces) > 1 else (pieces[0] if pieces else ""))
        return results

    def _split_pieces(self, ids, skip_special_tokens):
        """Text pieces (str) and code grids (np.ndarray) of one id array."""
        tok = self.tokenizer
        check_token_ids(ids, tok.vocab_size, "token_ids")  # also inside images, where ids are not decoded as text
        if skip_special_tokens:
            text = tok.decode(ids, skip_special_tokens=True)
            return [text] if text else []
        boi, eoi = tok.boi_token_id, tok.eoi_token_id
        pieces, start = [], 0
        for b in np.flatnonzero(ids == boi):
            if b < start:
                continue
            if b > start:
                pieces.append(tok.decode(ids[start:b]))
            ends = np.flatnonzero(ids[b + 1:] == eoi)
            end = b + 1 + int(ends[0]) if ends.size else len(ids)
            segment = ids[b: end + 1]
            grid = self._segment_grid(segment, complete=bool(ends.size))
            pieces.append(grid if grid is not None else tok.decode(segment))
            start = end + 1
        if start < len(ids):
            pieces.append(tok.decode(ids[start:]))
        return [p for p in pieces if not isinstance(p, str) or p]

    def _segment_grid(self, segment, complete):
        """The code grid of an image segment (boi .. eoi), or None for a cut segment with no complete row."""
        tok = self.tokenizer
        img = np.flatnonzero(segment == tok.img_token_id)
        body_start = int(img[0]) + 1 if img.size else 1
        prefix = self._prefix_regex.fullmatch(tok.decode(segment[1: body_start - 1])) if img.size else None
        body = segment[body_start:]
        rows = []
        for part in np.split(body, np.flatnonzero(body == tok.eol_token_id)):
            codes = part[(part >= self.visual_token_start) & (part < self.visual_token_start + self.codebook_size)]
            if codes.size:
                rows.append(codes - self.visual_token_start)
        lengths = [len(r) for r in rows]
        if complete:
            if not rows:
                raise ValueError("an image (between <|image start|> and <|image end|>) holds no visual tokens")
            if len(set(lengths)) > 1:
                raise ValueError(f"the image rows have different lengths {lengths}; cannot form a grid")
            return np.stack(rows)
        width = int(prefix.group("W")) if prefix else (lengths[0] if rows else 0)
        if rows and lengths[-1] != width:
            logger.warning("image cut short: dropping its incomplete last row (%d of %d tokens)", lengths[-1], width)
            rows, lengths = rows[:-1], lengths[:-1]
        if any(n != width for n in lengths):
            raise ValueError(f"the image rows have different lengths {lengths}; cannot form a grid")
        if not rows:
            return None
        logger.warning("image cut short (no <|image end|>): decoding its %d complete rows", len(rows))
        return np.stack(rows)

    def _decode_grids(self, grids):
        """``{id(grid): PIL image}``, decoding grids of the same shape in one vision tokenizer call."""
        if not grids:
            return {}
        if self.image_processor is None:
            raise ValueError("this Emu3Processor has no image_processor: it cannot postprocess decoded images")
        images = {}
        for shape in dict.fromkeys(g.shape for g in grids):
            group = [g for g in grids if g.shape == shape]
            pixels = self.vision_tokenizer.decode(np.stack(group))
            pil = self.image_processor.postprocess(pixels)["pixel_values"]
            for g, im in zip(group, pil):
                images[id(g)] = im
        return images
