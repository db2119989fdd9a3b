"""Emu3 generation: greedy or sampled decoding with classifier-free guidance and the image-grid constraint.

Gives the tokens of the original pipeline (transformers ``generate`` with ``UnbatchedClassifierFreeGuidanceLogitsProcessor``
and ``PrefixConstrainedLogitsProcessor(Emu3PrefixConstrainedLogitsHelper)``) by a leaner design:

* the conditional rows and the unconditional (negative prompt) rows run as ONE batch per step: both are left-padded
  to a common length, with explicit position ids and a key mask, so every row computes what its separate pass does;
* one KV cache for prompt + new tokens is allocated before the first step and written in place; a step attends
  over the filled slots only (the attention reads slots 0 .. the new token's), with one mask built before the first
  step that hides the prompts' padding;
* the allowed token range of every step (h rows of w visual tokens, each followed by eol, then eof, eoi, eos, pad) is
  computed once on the device from the step index and ``image_size`` as a ``[steps, B, 2]`` (lo, hi) table;
* scoring and the token choice go through ``paddlemix.ops.cfg_sample``; only the last position's logits are formed,
  only over the visual columns when every row must emit a visual token, and not at all for forced tokens;
* the host reads device values only to stop text generation early (once per step on CPU, every 8 steps on GPU).

``Emu3GenerationMixin.generate`` (the public entry, ``Emu3ForCausalLM.generate``) reads as its steps: ``_validate``
(every argument, the number of steps) -> ``_guided_batch`` (conditional + unconditional rows) -> ``_plan_steps``
(allowed-id table, per-step logits kind, sampling uniforms) -> ``_prefill`` (KV cache, masks, prompt pass) ->
``_decode`` (the step loop; ``_choose`` picks one step's tokens) -> ``_collect``.

Imports run one way, as transformers' ``GenerationMixin``: modeling -> generation -> kv_cache, no cycle. This module
imports ``kv_cache``, ``token_ids`` and paddlemix helpers (``ops``, ``distributed``, ``model_utils``), never the
model file; the model gets the loop by inheriting the mixin. The model is used through its ``config``, ``dtype``,
``model`` (the decoder) and ``lm_head`` (called, or ``column_slice``) only.
"""

import logging
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import paddle
from tqdm.auto import tqdm

from ... import ops
from ...distributed import is_main
from ..model_utils import on_gpu
from .kv_cache import Emu3KVCache, additive_mask, to_float32
from .token_ids import check_token_ids

logger = logging.getLogger(__name__)


def _int_array(value, name):
    if isinstance(value, paddle.Tensor):
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except ValueError:
        raise ValueError(f"{name} must be a rectangular array (rows of equal length; pad them)") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _prompt(ids, mask, name):
    """Validated (ids [B, L], mask [B, L]) numpy arrays; mask defaults to all ones."""
    ids = _int_array(ids, name)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise ValueError(f"{name} must be a [batch, length] array, got shape {list(ids.shape)}")
    if ids.shape[1] == 0:
        raise ValueError(f"{name} is empty: every prompt needs at least one token")
    if mask is None:
        mask = np.ones_like(ids)
    else:
        mask = _int_array(mask, f"{name} attention mask")
        if mask.ndim == 1:
            mask = mask[None]
        if mask.shape != ids.shape:
            raise ValueError(f"the attention mask of {name} has shape {list(mask.shape)}, expected {list(ids.shape)}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"the attention mask of {name} must hold only 0 and 1")
    empty = np.flatnonzero(mask.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(f"{name} row(s) {empty.tolist()} are empty (attention mask all 0)")
    right = np.flatnonzero(mask[:, -1] == 0)
    if right.size:
        raise ValueError(
            f"{name} row(s) {right.tolist()} end with padding: generation continues after the last token, so pad "
            "prompts on the left (the tokenizer's padding_side='left')"
        )
    return ids, mask


def _image_grid(image_size, batch):
    """(h, w) int64 arrays [B] from image_size [B, 2] or [1, 2] (one grid for every row)."""
    size = _int_array(image_size, "image_size")
    if size.ndim == 1 and size.shape == (2,):
        size = size[None]
    if size.ndim != 2 or size.shape[1] != 2 or size.shape[0] not in (1, batch):
        raise ValueError(
            f"image_size must have shape [{batch}, 2] (or [1, 2]) of token grids (h, w), got {list(size.shape)}"
        )
    if (size < 1).any():
        raise ValueError(f"image_size must hold positive grid sizes, got {size.tolist()}")
    size = np.broadcast_to(size, (batch, 2))
    return size[:, 0].copy(), size[:, 1].copy()


def grid_length(height, width):
    """New tokens an h x w image takes: h rows of w visual tokens + eol each, then eof, eoi, eos."""
    return (width + 1) * height + 3


def allowed_table(config, first_offset, height, width, steps):
    """(lo, hi) of the allowed ids of every step and row, int64 [steps, B, 2], computed on the device.

    first_offset [B]: the offset of the first new token, i.e. prompt length - index of the row's first
    ``<|image token|>``. The original's rules in its order: offset % (w+1) == 0 -> eol (tested first, so it also
    wins on the eof/eoi/eos offsets when they are multiples of w+1); (w+1)h+1 -> eof; +2 -> eoi; +3 -> eos;
    beyond -> pad; otherwise any visual token (eoi+1 .. vocab_size-1).
    """
    off = paddle.to_tensor(first_offset).unsqueeze(0) + paddle.arange(steps, dtype="int64").unsqueeze(1)
    h = paddle.to_tensor(height).unsqueeze(0)
    w = paddle.to_tensor(width).unsqueeze(0)
    end = (w + 1) * h
    lo = paddle.full_like(off, config.first_visual_token_id)
    hi = paddle.full_like(off, config.vocab_size)
    for cond, token in (
        (off > end + 3, config.pad_token_id),
        (off == end + 3, config.eos_token_id),
        (off == end + 2, config.eoi_token_id),
        (off == end + 1, config.eof_token_id),
        (off % (w + 1) == 0, config.eol_token_id),
    ):
        lo = paddle.where(cond, paddle.full_like(lo, token), lo)
        hi = paddle.where(cond, paddle.full_like(hi, token + 1), hi)
    return paddle.stack([lo, hi], axis=-1)


def _left_pad(ids, mask, length, pad_id):
    extra = length - ids.shape[1]
    if extra == 0:
        return ids, mask
    return (
        np.concatenate([np.full((ids.shape[0], extra), pad_id, np.int64), ids], axis=1),
        np.concatenate([np.zeros((mask.shape[0], extra), np.int64), mask], axis=1),
    )


def _is_number(v):
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


def _is_natural(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0


def _check_sampling(top_k, top_p, temperature, seed):
    if top_k is not None and not _is_natural(top_k):
        raise ValueError(f"top_k must be a non-negative integer or None, got {top_k!r}")
    if top_p is not None and not (_is_number(top_p) and 0.0 < float(top_p) <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not (_is_number(temperature) and float(temperature) > 0.0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    # seed: an int, or one per row, each an int or a non-empty sequence of ints (numpy's SeedSequence entropy)
    if seed is not None:
        rows = seed if isinstance(seed, (list, tuple, np.ndarray)) else [seed]
        entropies = [row if isinstance(row, (list, tuple, np.ndarray)) else [row] for row in rows]
        if not all(len(e) and all(map(_is_natural, e)) for e in entropies):
            raise ValueError(f"seed must be a non-negative integer, one per row, or None; got {seed!r}")


@dataclass
class _Request:
    """Validated inputs of one ``generate`` call (numpy on the host)."""

    ids: np.ndarray  # [B, L] prompts
    mask: np.ndarray  # [B, L] 1 token / 0 padding
    neg_ids: Optional[np.ndarray]  # [B, Ln] unconditional prompts (guidance only)
    neg_mask: Optional[np.ndarray]
    scale: Optional[float]  # guidance scale, None without guidance
    grid: Optional[tuple]  # (height [B], width [B], first_offset [B]) for image generation
    steps: int  # decode steps (new tokens at most)
    sampling: Optional[tuple]  # (top_k, top_p, temperature) when sampling
    seed: object  # None, one int, or one int per row
    past: int = 0  # tokens already in past_key_values (a chat's earlier turns)

    @property
    def batch(self):
        return self.ids.shape[0]

    @property
    def longest(self):
        """The common prompt length of the guided batch."""
        return max(self.ids.shape[1], self.neg_ids.shape[1] if self.scale is not None else 0)


@dataclass
class _Plan:
    """What every step needs, prepared before the first: the allowed-id table, which logits each step forms, the
    visual-column head and the sampling uniforms."""

    allowed: Optional[paddle.Tensor]  # [steps, B, 2] (lo, hi), image generation only
    kinds: List[str]  # per step: "forced", "visual" or "full"
    visual_head: Optional[object]  # hidden -> logits of the visual columns
    uniforms: Optional[paddle.Tensor]  # [steps, B] when sampling


class Emu3GenerationMixin:
    """``generate`` for a causal LM with ``config``, ``dtype``, ``model`` (the decoder) and ``lm_head``, as
    transformers' ``GenerationMixin``: ``Emu3ForCausalLM`` inherits it, so this module never imports the model."""

    def generate(
        self,
        input_ids,
        attention_mask=None,
        negative_prompt_ids=None,
        negative_prompt_attention_mask=None,
        guidance_scale=None,
        image_size=None,
        max_new_tokens=None,
        do_sample=False,
        top_k=None,
        top_p=None,
        temperature=1.0,
        seed=None,
        progress=True,
        past_key_values=None,
        streamer=None,
    ):
        """Generate after left-padded prompts; returns int64 [B, prompt_len + new_len] (prompt, then new tokens).

        input_ids / attention_mask: [B, L] (1 token, 0 padding; padding on the left, as the processor writes it).
        guidance_scale: classifier-free guidance; None or 1 runs no unconditional branch. With guidance,
            negative_prompt_ids [B, Ln] is the unconditional prompt (default: the last prompt token, as
            transformers). Without negative_prompt_attention_mask every negative token counts as real (the original
            passes no mask); with it, its padding is masked and positions follow it.
        image_size: [B, 2] or [1, 2] token grids (h, w): constrains each row to an h x w image, then eof, eoi, eos.
            Needs an ``<|image token|>`` in each prompt (the grid counts from the first one).
        max_new_tokens: at most this many new tokens. With image_size it must cover the grid ((w+1)*h+3; default:
            that) and generation ends after the longest grid; prompt + grid beyond max_position_embeddings is an
            error. Without it (default: up to max_position_embeddings) it is capped at max_position_embeddings, with
            a warning.
        do_sample: sample (top_k, top_p, temperature as transformers' warpers) instead of greedy argmax.
        seed: makes sampling reproducible (uniforms from numpy's default_rng(seed), identical on every device). A
            list of B seeds gives each row its own stream, so a row's result does not depend on the rows batched with
            it (row i of a batch equals a one-row run with seed[i]).
        progress: a tqdm bar over the new tokens (shown by rank 0 only when launched with several processes).
        past_key_values: an ``Emu3KVCache`` holding the first ``past_key_values.length`` tokens of every row (e.g.
            the earlier turns of a chat); input_ids [B, L] (no padding) continue them, and the cache is filled in
            place (prompt + new tokens but the last). Text generation only: no guidance, no image_size.
        streamer: an object with ``put(ids)`` / ``end()`` (see ``streaming.py``): ``put(input_ids [B, L])`` first,
            then ``put(new tokens [B])`` after every step, then ``end()``.
        Rows that produced eos continue with pad_token_id; generation stops once every row has.
        """
        if streamer is not None and not all(callable(getattr(streamer, m, None)) for m in ("put", "end")):
            raise ValueError(
                f"streamer must have put(token_ids) and end() methods, got {type(streamer).__name__}")
        req = _validate(
            self.config, input_ids, attention_mask, negative_prompt_ids, negative_prompt_attention_mask,
            guidance_scale, image_size, max_new_tokens, do_sample, top_k, top_p, temperature, seed, past_key_values,
        )
        all_ids, all_mask = _guided_batch(req, self.config.pad_token_id)
        plan = _plan_steps(self, req)
        if streamer is not None:
            streamer.put(req.ids)
        with paddle.no_grad():
            hidden, cache, step_mask, next_pos = _prefill(self, req, all_ids, all_mask, past_key_values)
            new_tokens = _decode(self, req, plan, hidden, cache, step_mask, next_pos, progress, streamer)
        if streamer is not None:
            streamer.end()
        return _collect(req.ids, new_tokens, self.config.eos_token_id)


def _validate(config, input_ids, attention_mask, negative_prompt_ids, negative_prompt_attention_mask, guidance_scale,
              image_size, max_new_tokens, do_sample, top_k, top_p, temperature, seed, past_key_values=None):
    """Every argument checked (a ValueError naming the problem) and the number of steps fixed: a ``_Request``."""
    ids, mask = _prompt(input_ids, attention_mask, "input_ids")
    check_token_ids(ids, config.vocab_size, "input_ids")
    batch, prompt_len = ids.shape
    if guidance_scale is not None and (
        not isinstance(guidance_scale, (int, float, np.number)) or not np.isfinite(guidance_scale)
    ):
        raise ValueError(f"guidance_scale must be a finite number or None, got {guidance_scale!r}")
    use_cfg = guidance_scale is not None and float(guidance_scale) != 1.0
    neg_ids = neg_mask = None
    if use_cfg:
        if negative_prompt_ids is None:
            neg_ids, neg_mask = ids[:, -1:].copy(), np.ones((batch, 1), np.int64)
        else:
            neg_ids, neg_mask = _prompt(negative_prompt_ids, negative_prompt_attention_mask, "negative_prompt_ids")
            check_token_ids(neg_ids, config.vocab_size, "negative_prompt_ids")
            if neg_ids.shape[0] != batch:
                raise ValueError(
                    f"negative_prompt_ids has {neg_ids.shape[0]} rows but input_ids has {batch}: give one per prompt"
                )
    elif negative_prompt_ids is not None:
        logger.warning("negative_prompt_ids is ignored: guidance_scale is %s", guidance_scale)
    past = _past_length(past_key_values, mask, use_cfg or image_size is not None)

    grid = None
    if image_size is not None:
        if config.first_visual_token_id >= config.vocab_size:
            raise ValueError(
                f"image generation needs visual tokens after <|image end|> (id {config.eoi_token_id}), but the "
                f"vocabulary ends at {config.vocab_size - 1}"
            )
        height, width = _image_grid(image_size, batch)
        is_img = ids == config.img_token_id
        missing = np.flatnonzero(~is_img.any(axis=1))
        if missing.size:
            raise ValueError(
                f"image_size was given, but prompt row(s) {missing.tolist()} have no <|image token|> "
                f"(id {config.img_token_id}); build image prompts with the processor's mode 'G'"
            )
        grid = (height, width, prompt_len - is_img.argmax(axis=1))
        need = int(grid_length(height, width).max())
        if max_new_tokens is None:
            max_new_tokens = need
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < need:
            raise ValueError(
                f"max_new_tokens={max_new_tokens!r} is too small for the image grid: "
                f"{height.tolist()} x {width.tolist()} tokens need (w+1)*h+3 = {need} new tokens"
            )
        steps = need
    longest = max(prompt_len, neg_ids.shape[1] if use_cfg else 0)
    room = config.max_position_embeddings - past - longest
    if image_size is None:
        if max_new_tokens is None:
            max_new_tokens = room
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if room < 1:
            raise ValueError(
                f"prompt length {longest} leaves no room for new tokens within max_position_embeddings "
                f"{config.max_position_embeddings}"
            )
        if max_new_tokens > room:
            logger.warning("max_new_tokens %d capped to %d by max_position_embeddings %d",
                           max_new_tokens, room, config.max_position_embeddings)
        steps = int(min(max_new_tokens, room))
    elif steps > room:
        raise ValueError(
            f"prompt length {longest} + {steps} new tokens of the image grid exceeds max_position_embeddings "
            f"{config.max_position_embeddings}"
        )
    if do_sample:
        _check_sampling(top_k, top_p, temperature, seed)
    if isinstance(seed, (list, tuple, np.ndarray)) and len(seed) != batch:
        raise ValueError(f"seed holds {len(seed)} per-row seeds for {batch} prompts: give one int, or one per prompt")
    return _Request(
        ids, mask, neg_ids, neg_mask, float(guidance_scale) if use_cfg else None, grid, steps,
        (top_k, top_p, temperature) if do_sample else None, seed, past,
    )


def _guided_batch(req, pad_id):
    """One batch: the conditional rows, then (with guidance) the unconditional rows, left-padded to a common length."""
    if req.scale is None:
        return req.ids, req.mask
    ids_c, mask_c = _left_pad(req.ids, req.mask, req.longest, pad_id)
    ids_u, mask_u = _left_pad(req.neg_ids, req.neg_mask, req.longest, pad_id)
    return np.concatenate([ids_c, ids_u]), np.concatenate([mask_c, mask_u])


def _seeded_uniforms(seed, steps, batch):
    """float32 [steps, batch] uniforms: one default_rng(seed) stream over the whole array, or one stream per row."""
    if np.ndim(seed) == 0:
        return np.random.default_rng(seed).random((steps, batch), dtype=np.float32)
    seeds = _int_array(seed, "seed")
    if seeds.ndim != 1 or seeds.shape[0] != batch:
        raise ValueError(f"seed must be one integer or a list of {batch} (one per row), got shape {list(seeds.shape)}")
    return np.stack([np.random.default_rng(int(s)).random(steps, dtype=np.float32) for s in seeds], axis=1)


def _plan_steps(model, req):
    """The allowed-id table, the logits each step needs and the sampling uniforms, all before the first step.

    Which steps need which logits is read once from the on-device table: a step where every row is forced to one
    token needs no logits at all; a step where every row may take any visual token needs only the visual columns
    of lm_head (the guided log-softmax differs from the full-vocabulary one by a per-row constant, which changes
    neither the argmax nor the sampling distribution); any other step uses the full lm_head and the table's range.
    """
    config = model.config
    allowed = allowed_table(config, req.grid[2], req.grid[0], req.grid[1], req.steps) if req.grid else None
    kinds = _step_plan(allowed.numpy(), config) if allowed is not None else ["full"] * req.steps
    visual_head = model.lm_head.column_slice(config.first_visual_token_id) if "visual" in kinds else None
    uniforms = None
    if req.sampling is not None:
        if req.seed is not None:
            uniforms = paddle.to_tensor(_seeded_uniforms(req.seed, req.steps, req.batch))
        else:
            uniforms = paddle.rand([req.steps, req.batch], dtype="float32")
            if model.config.tensor_parallel_degree > 1:  # every rank samples with rank 0's uniforms
                paddle.distributed.broadcast(uniforms, src=0)
    return _Plan(allowed, kinds, visual_head, uniforms)


def _prefill(model, req, all_ids, all_mask, past_key_values=None):
    """Allocate the KV cache for prompt + new tokens (or grow ``past_key_values``, which holds ``req.past`` tokens
    before the prompts), run the prompts; returns the last position's hidden state [R, H], the cache, the decode
    steps' mask and each row's next position [R, 1]."""
    config, dtype = model.config, model.dtype
    rows, past = all_ids.shape[0], req.past
    positions = np.where(all_mask == 1, np.cumsum(all_mask, axis=1) - 1, 1) + past
    need = past + req.longest + req.steps
    cache = past_key_values if past_key_values is not None else Emu3KVCache.for_model(config, rows, need, dtype)
    cache.reserve(need)
    capacity = cache.capacity  # a grown cache may hold more slots than this call needs
    # the generated slots count as tokens: a query never reads a slot after its own (the attention stops at the new
    # token's slot), so one mask [R, 1, 1, capacity] serves the prefill and every step
    key_mask = paddle.to_tensor(np.concatenate([np.ones((rows, past), np.int64), all_mask,
                                                np.ones((rows, capacity - past - req.longest), np.int64)], axis=1))
    prefill_mask = additive_mask(key_mask, req.longest, 0, dtype) if not bool(all_mask.all()) else None
    step_mask = additive_mask(key_mask, 1, capacity - 1, dtype)
    next_pos = paddle.to_tensor(past + all_mask.sum(axis=1, keepdims=True))
    hidden = model.model(paddle.to_tensor(all_ids), paddle.to_tensor(positions), prefill_mask, cache,
                         last_only=True)[0][:, 0]
    return hidden, cache, step_mask, next_pos


def _decode(model, req, plan, hidden, cache, step_mask, next_pos, progress, streamer=None):
    """The decode loop: choose a token per row (``_choose``), hand it to the streamer, feed it back, stop after the
    grid or once every row produced eos (text: checked on the host once per step on CPU, every 8 steps on GPU
    without a streamer). One [B] tensor per step."""
    config = model.config
    sync_every = 8 if on_gpu() and streamer is None else 1
    new_tokens = []
    unfinished = paddle.ones([req.batch], dtype="bool")
    pad = paddle.full([req.batch], config.pad_token_id, dtype="int64")
    bar = tqdm(total=req.steps, desc="Emu3 generate", unit="tok", disable=not (progress and is_main()))
    for step in range(req.steps):
        token = paddle.where(unfinished, _choose(model, req, plan, hidden, step), pad)
        new_tokens.append(token)
        if streamer is not None:
            streamer.put(token.numpy())
        unfinished = unfinished & (token != config.eos_token_id)
        bar.update(1)
        done = step + 1
        if done == req.steps or (req.grid is None and done % sync_every == 0 and not bool(unfinished.any())):
            break
        step_ids = (paddle.concat([token, token]) if req.scale is not None else token).unsqueeze(1)
        hidden = model.model(step_ids, next_pos + step, step_mask, cache, last_only=True)[0][:, 0]
    bar.close()
    return new_tokens


def _choose(model, req, plan, hidden, step):
    """The tokens [B] of one step from the last hidden states [R, H]: the forced id, or guided scores of the step's
    logits (visual columns only, or all with the table's range) reduced by ``ops.cfg_sample``."""
    kind = plan.kinds[step]
    if kind == "forced":
        return plan.allowed[step][:, 0]
    if kind == "visual":
        logits, step_range = to_float32(plan.visual_head(hidden)), None
    else:
        logits = to_float32(model.lm_head(hidden))
        step_range = plan.allowed[step] if plan.allowed is not None else None
    batch = req.batch
    token = ops.cfg_sample(
        logits[:batch],
        logits[batch:] if req.scale is not None else None,
        req.scale,
        step_range,
        *(req.sampling or (None, None, 1.0)),
        plan.uniforms[step] if plan.uniforms is not None else None,
    )
    return token + model.config.first_visual_token_id if kind == "visual" else token


def _collect(ids, new_tokens, eos_id):
    """Prompt and new tokens [B, L + new_len], cut after the step where the last row produced eos."""
    out = paddle.stack(new_tokens, axis=1).numpy()
    return paddle.to_tensor(np.concatenate([ids, out[:, :_generated_length(out, eos_id)]], axis=1))


def _past_length(cache, mask, guided_or_image):
    """Tokens already in ``cache`` (0 without one); a cache continues unpadded text-generation rows only."""
    if cache is None:
        return 0
    if not isinstance(cache, Emu3KVCache):
        raise ValueError(f"past_key_values must be an Emu3KVCache, got {type(cache).__name__}")
    if guided_or_image:
        raise ValueError("past_key_values continues text generation only: no guidance_scale, no image_size")
    if cache.keys[0].shape[0] != mask.shape[0]:
        raise ValueError(f"past_key_values holds {cache.keys[0].shape[0]} rows but input_ids has {mask.shape[0]}")
    if not mask.all():
        raise ValueError("input_ids continuing past_key_values must not be padded (attention mask all 1)")
    return cache.length


def _step_plan(table, config):
    """Per step: "forced" (every row has one allowed id), "visual" (every row may take any visual token) or "full"."""
    lo, hi = table[..., 0], table[..., 1]
    forced = (hi - lo == 1).all(axis=1)
    visual = ((lo == config.first_visual_token_id) & (hi == config.vocab_size)).all(axis=1)
    return ["forced" if f else "visual" if v else "full" for f, v in zip(forced, visual)]


def _generated_length(tokens, eos_id):
    """Columns up to the step where the last row produced eos (transformers stops there); all if a row never did."""
    has_eos = (tokens == eos_id).any(axis=1)
    if not has_eos.all():
        return tokens.shape[1]
    return int((tokens == eos_id).argmax(axis=1).max()) + 1
