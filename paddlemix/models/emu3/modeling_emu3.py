"""The Emu3 language model: a Llama-style decoder (RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU).

Parameter names equal the original checkpoint keys (``model.layers.0.self_attn.q_proj.weight``, ``lm_head.weight``),
so the original safetensors load as they are; transformers' ``-hf`` names are mapped in ``_map_checkpoint_key``.

Imports run one way, as transformers' ``GenerationMixin``: modeling -> generation -> kv_cache, no cycle.
``Emu3ForCausalLM`` takes ``generate`` from ``generation_emu3.Emu3GenerationMixin``; the KV cache, the additive
mask and ``to_float32``, which both the model and the loop need, live in ``kv_cache`` (re-exported here, so
``from paddlemix.models.emu3.modeling_emu3 import Emu3KVCache`` keeps working); ``generation_emu3`` never imports
this file.
"""

import logging
import math
import re
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.autograd import PyLayer
from paddle.distributed.fleet.utils import recompute

from ... import ops
from ..model_utils import PretrainedModel, on_gpu
from .configuration_emu3 import Emu3Config
from .generation_emu3 import Emu3GenerationMixin
from .kv_cache import Emu3KVCache, additive_mask, to_float32
from .token_ids import check_token_ids

logger = logging.getLogger(__name__)

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}
_LOGGED_BACKENDS = set()
# queries per block of the matmul attention: block i attends only to the key slots up to its last query (the later
# ones are hidden by the causal mask), so a long prefill computes about half of the scores, and the scores never
# exceed [B, H, QUERY_BLOCK, S]
QUERY_BLOCK = 256


def attention_backend(dtype, needs_cache_or_mask, head_dim, training=False, cached=False):
    """The one place that picks the attention kernel: "flash", "math", "train" or "train_cache". Each choice is
    logged once.

    * "flash": ``paddle.nn.functional.flash_attention`` (native GQA, causal) on a GPU of compute capability >= 8 in
      half precision, for a prefill with no padding mask and no earlier cache (it takes no mask argument), where
      Paddle's flash_attention really runs flash attention 2 (``flash_attention_problem``);
    * "math" everywhere else (the CPU path): scores, float32 softmax and weighted sum as two batched matmuls with
      the query heads grouped per KV head, reading the cache in its own ``[B, kv_heads, capacity, D]`` layout, so
      neither repeated nor transposed K/V is ever materialised. It replaces Paddle 3.3's CPU
      ``scaled_dot_product_attention``, which measured 10-20x slower per decode step (it expands K/V and
      transposes a ``[B, S, H, D]`` cache on every call). Same math as the original's eager attention.
    * "train" (the model in train mode, no cache): ``ops.causal_attention``, the "math" attention as one autograd
      op whose backward recomputes each query block's probabilities (flash attention's memory: no float [rows, keys]
      tensor is kept for the backward; with attention dropout, a one-byte keep mask), dropout on the probabilities
      as the original's eager attention.
    * "train_cache" (train mode with a KV cache): the "math" attention over the cache recorded op by op by
      autograd (no in-place ops), with the same dropout.
    Flash attention also serves training where it runs (it takes the dropout rate itself).
    """
    backend, reason = "math", None
    if training:
        backend = "train_cache" if cached else "train"
    if not needs_cache_or_mask and dtype in (paddle.float16, paddle.bfloat16) and on_gpu():
        reason = flash_attention_problem(head_dim)
        if reason is None:
            backend = "flash"
    if (backend, reason) not in _LOGGED_BACKENDS:
        _LOGGED_BACKENDS.add((backend, reason))
        names = {"flash": "paddle flash_attention", "math": "grouped matmul attention",
                 "train": "causal block attention for training (probabilities recomputed in the backward)",
                 "train_cache": "grouped matmul attention over the cache for training (autograd)"}
        logger.info("Emu3 attention: using %s%s", names[backend], f" ({reason})" if reason else "")
    return backend


def _paddle_flag(name, default):
    """A Paddle flag's value, ``default`` where this build does not define it (read as Paddle's own sdpa.py does)."""
    return paddle.framework._global_flags().get(name, default)


def flash_attention_problem(head_dim):
    """Why Paddle 3.3's ``flash_attention(q, k, v, causal=True, training=False)`` would not run flash attention 2
    correctly on the current GPU, or None when it does (read from paddle/nn/functional/flash_attention.py):

    * compute capability < 8: flash attention 2 has no kernels for older GPUs;
    * a build without flash attention (``FLAGS_flash_attn_available`` false): ``_select_sdp`` picks the math
      attention, which raises on grouped-query K/V, or memory-efficient attention, which drops ``causal``;
    * head_dim > 256: ``_select_sdp_cuda`` switches to memory-efficient attention, called without the causal mask;
    * ``FLAGS_flash_attn_version=3`` (unless ``FLAGS_cudnn_deterministic`` forces version 2): flash_attention
      asserts ``training or fa_version == 2``, so inference stops at an AssertionError (other values raise).
    """
    major = paddle.device.cuda.get_device_capability()[0]
    if major < 8:
        return f"flash attention needs compute capability 8.0 or newer, this GPU has {major}.x"
    if not _paddle_flag("FLAGS_flash_attn_available", False):
        return "this Paddle build has no flash attention"
    if head_dim > 256:
        return (f"head_dim {head_dim} > 256: Paddle's flash_attention would run memory-efficient attention "
                "without the causal mask")
    version = _paddle_flag("FLAGS_flash_attn_version", 2)
    if version != 2 and not _paddle_flag("FLAGS_cudnn_deterministic", False):
        return (f"FLAGS_flash_attn_version={version}: Paddle 3.3's flash_attention runs only version 2 at inference "
                "(version 3 asserts training); set FLAGS_flash_attn_version=2 to use flash attention")
    return None


def grouped_attention(q, keys, values, attn_mask, dropout=None):
    """Attention of q [B, L, H, D] over keys, values [B, Hk, S, D]; query head i uses KV head i // (H / Hk).

    attn_mask: None (every key visible), an additive [B, 1, L, S] mask, or (decode steps) an additive mask of
    exactly the scores' shape [B, Hk, (H / Hk) * L, S], which saves a broadcast. Softmax in float32.
    dropout: None (inference: scale, mask and softmax in place) or the training dropout rate on the probabilities
    (out of place, so autograd can differentiate it).
    """
    bsz, q_len, heads, dim = q.shape
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    qh = q.reshape([bsz, kv_heads, group, dim]) if q_len == 1 else q.transpose([0, 2, 1, 3])
    qh = qh.reshape([bsz, kv_heads, group * q_len, dim])
    scores = paddle.matmul(qh, keys, transpose_y=True)
    if dropout is None:
        probs = ops.masked_softmax_(scores, attn_mask, 1.0 / math.sqrt(dim))  # scale, mask, float32 softmax in one op
    else:
        probs = training_softmax(scores, attn_mask, 1.0 / math.sqrt(dim), q_len)
    if probs.dtype != q.dtype:
        probs = probs.astype(q.dtype)
    if dropout:
        probs = F.dropout(probs, p=dropout, training=True)
    out = paddle.matmul(probs, values)  # [B, Hk, g*L, D]
    if q_len == 1:
        return out.reshape([bsz, 1, heads, dim])
    return out.reshape([bsz, heads, q_len, dim]).transpose([0, 2, 1, 3])


def training_softmax(scores, attn_mask, scale, q_len):
    """``ops.masked_softmax_`` out of place (for autograd): softmax(scores * scale + mask) in float32 over scores
    [B, Hk, g * L, S] with an additive mask None, [B or 1, 1, L, S] (broadcast over the heads and groups) or of the
    scores' shape."""
    scores = scores * scale
    if attn_mask is not None and attn_mask.shape[1] != 1:
        scores = scores + attn_mask
    elif attn_mask is not None:
        b, hk, rows, s = scores.shape
        scores = (scores.reshape([b, hk * rows // q_len, q_len, s]) + attn_mask).reshape([b, hk, rows, s])
    return F.softmax(to_float32(scores), axis=-1)


def padding_row_frozen(embeddings, input_ids, pad_token_id):
    """The embeddings with no gradient flowing into the pad token's row, as the original's
    ``nn.Embedding(..., padding_idx=pad_token_id)`` (same values: the row itself is looked up, only its gradient
    is cut), so training never moves that row."""
    if pad_token_id is None:
        return embeddings
    is_pad = (input_ids == pad_token_id).unsqueeze(-1)
    return paddle.where(is_pad, embeddings.detach(), embeddings)


def rope_inv_freq(config, kv_len):
    """1 / theta^(2i/D) as float32 numpy, with the original's linear or dynamic-NTK scaling applied.

    Linear scaling divides positions by the factor (here folded into inv_freq). Dynamic scaling enlarges the base
    once the key length exceeds max_position_embeddings, as the original recomputes its table for that length.
    """
    dim = config.head_dim
    base = float(config.rope_theta)
    rs = config.rope_scaling
    if rs is not None and rs["type"] == "dynamic" and kv_len > config.max_position_embeddings:
        factor = rs["factor"]
        base = base * ((factor * kv_len / config.max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(base) ** exponents)).astype(np.float32)
    if rs is not None and rs["type"] == "linear":
        inv_freq = (inv_freq / np.float32(rs["factor"])).astype(np.float32)
    return inv_freq


@dataclass
class Emu3CausalLMOutput:
    logits: Optional[paddle.Tensor] = None
    hidden_states: Optional[List[paddle.Tensor]] = None
    past_key_values: Optional[Emu3KVCache] = None
    loss: Optional[paddle.Tensor] = None


class Emu3RMSNorm(nn.Layer):
    def __init__(self, hidden_size, eps):
        super().__init__()
        self.weight = self.create_parameter([hidden_size], default_initializer=nn.initializer.Constant(1.0))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        return ops.rms_norm(hidden_states, self.weight, self.variance_epsilon)


class Emu3Linear(nn.Linear):
    """A bias-free ``nn.Linear`` computed by ``ops.linear``: on CPU the few rows of a decode step stream a large
    weight once through the fused kernel, anything else takes Paddle's matmul. Same ``weight`` parameter as
    ``nn.Linear`` (the checkpoint loader transposes it as for any ``nn.Linear``). The weight may be stored in bf16
    while x is float32 (``quantization.py``); ``WeightOnlyInt8Linear`` replaces this layer for int8 weights."""

    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features, bias_attr=False)

    def forward(self, x):
        return ops.linear(x, self.weight)

    def column_slice(self, start):
        """A function x -> the outputs start.. of this layer (a contiguous copy of those weight columns, made once):
        generation's lm_head over the visual tokens only."""
        weight = self.weight[:, start:].contiguous()
        return lambda x: ops.linear(x, weight)


class Emu3MLP(nn.Layer):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = Emu3Linear(config.hidden_size, config.intermediate_size)
        self.up_proj = Emu3Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = Emu3Linear(config.intermediate_size, config.hidden_size)
        self.act_fn = _ACTIVATIONS[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Emu3Attention(nn.Layer):
    """Grouped-query attention: KV head j serves the consecutive query heads j*g .. (j+1)*g-1."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.attention_dropout = config.attention_dropout
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = Emu3Linear(config.hidden_size, self.num_heads * self.head_dim)
        self.k_proj = Emu3Linear(config.hidden_size, self.num_kv_heads * self.head_dim)
        self.v_proj = Emu3Linear(config.hidden_size, self.num_kv_heads * self.head_dim)
        self.o_proj = Emu3Linear(self.num_heads * self.head_dim, config.hidden_size)

    def forward(self, hidden_states, position_ids, inv_freq, attn_mask, cache):
        """attn_mask: an additive mask over the key slots ([B, 1, L, S], or for one query [B, Hk, g, S]), or None:
        plain causal attention over the filled slots (no unfilled cache slots)."""
        bsz, q_len = hidden_states.shape[0], hidden_states.shape[1]
        q = self.q_proj(hidden_states).reshape([bsz, q_len, self.num_heads, self.head_dim])
        k = self.k_proj(hidden_states).reshape([bsz, q_len, self.num_kv_heads, self.head_dim])
        v = self.v_proj(hidden_states).reshape([bsz, q_len, self.num_kv_heads, self.head_dim])
        q, k = ops.rotary_embedding(q, k, position_ids, inv_freq)
        training = self.training
        backend = attention_backend(
            q.dtype, attn_mask is not None or (cache is not None and cache.length > 0), self.head_dim, training,
            cache is not None,
        )
        dropout = self.attention_dropout if backend == "train_cache" else None
        if backend == "train":
            if attn_mask is None:  # a layer called on its own (Emu3Model passes the mask it built)
                attn_mask = additive_mask(paddle.ones([1, q_len], "int64"), q_len, 0, q.dtype)
            out = ops.causal_attention(q, k, v, attn_mask, QUERY_BLOCK, self.attention_dropout)
        elif backend == "flash":
            if cache is not None:
                cache.update(self.layer_idx, k, v)
            rate = self.attention_dropout if training else 0.0
            out = F.flash_attention.flash_attention(q, k, v, dropout=rate, causal=q_len > 1, training=training)[0]
        else:
            past = cache.length if cache is not None else 0
            if cache is not None:
                keys, values = cache.update(self.layer_idx, k, v)
            else:
                keys, values = k.transpose([0, 2, 1, 3]), v.transpose([0, 2, 1, 3])
            if attn_mask is None and q_len > 1:  # a layer called on its own (Emu3Model passes the mask it built)
                attn_mask = additive_mask(paddle.ones([1, keys.shape[2]], "int64"), q_len, past, q.dtype)
            blocks = []
            for i in range(0, q_len, QUERY_BLOCK):
                end = past + min(i + QUERY_BLOCK, q_len)  # slots after the block's last query are masked for it
                mask = attn_mask
                if mask is not None and (end < mask.shape[3] or q_len > QUERY_BLOCK):
                    mask = mask[:, :, i: i + QUERY_BLOCK, :end] if q_len > 1 else mask[:, :, :, :end]
                if end < keys.shape[2]:
                    blocks.append(grouped_attention(q[:, i: i + QUERY_BLOCK], keys[:, :, :end], values[:, :, :end], mask,
                                                    dropout))
                else:
                    blocks.append(grouped_attention(q[:, i: i + QUERY_BLOCK], keys, values, mask, dropout))
            out = blocks[0] if len(blocks) == 1 else paddle.concat(blocks, axis=1)
        return self.o_proj(out.reshape([bsz, q_len, self.num_heads * self.head_dim]))


class Emu3DecoderLayer(nn.Layer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = Emu3Attention(config, layer_idx)
        self.mlp = Emu3MLP(config)
        self.input_layernorm = Emu3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = Emu3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.dropout = nn.Dropout(config.attention_dropout)  # the original's: on both residual branches, in training

    def forward(self, hidden_states, position_ids, inv_freq, attn_mask, cache):
        h = hidden_states + self.dropout(self.self_attn(
            self.input_layernorm(hidden_states), position_ids, inv_freq, attn_mask, cache
        ))
        return h + self.dropout(self.mlp(self.post_attention_layernorm(h)))

    def decode_step(self, hidden_states, position_ids, inv_freq, attn_mask, cache):
        """``forward`` for one new token per row with a cache, as one fused op (``ops.decoder_step``): same math,
        one dispatch instead of about thirty. Emu3Model runs all its layers in one such call where
        ``ops.decoder_step_available`` says it runs (this method: one layer, e.g. when every layer's output is kept)."""
        i = self.self_attn.layer_idx
        return ops.decoder_step(
            hidden_states, self._step_weights(), [cache.keys[i]], [cache.values[i]], cache.length, position_ids,
            inv_freq, attn_mask, self.input_layernorm.variance_epsilon,
        )

    def _step_weights(self):
        """The layer's 9 weights in ``ops.decoder_step``'s order (int8 layers: then the 7 projections' scales), kept
        between steps (the sublayer lookups cost more than the op's dispatch); rebuilt when the parameters were
        replaced (e.g. ``model.to``), which the first and last projections' stored weights tell."""
        cached = self.__dict__.get("_fused_weights")
        attn, mlp = self.self_attn, self.mlp
        if (cached is None or cached[1] is not _stored_weight(attn.q_proj)
                or cached[8] is not _stored_weight(mlp.down_proj)):
            projections = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
            stored = [_stored_weight(p) for p in projections]
            cached = [self.input_layernorm.weight, *stored[:4], self.post_attention_layernorm.weight, *stored[4:]]
            if "quant_scale" in attn.q_proj._parameters:
                cached += [p.quant_scale for p in projections]
            self.__dict__["_fused_weights"] = cached
        return cached


def _stored_weight(linear):
    """The weight a projection stores: its int8 ``quant_weight`` (quantization.py) or its ``weight``."""
    params = linear._parameters
    return params["quant_weight"] if "quant_weight" in params else params["weight"]


class Emu3Model(nn.Layer):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.LayerList([Emu3DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = Emu3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.dropout = nn.Dropout(config.attention_dropout)  # the original's dropout on the input embeddings
        self.gradient_checkpointing = False
        self._inv_freq = {}

    def inv_freq(self, kv_len):
        """The rotary frequencies as a tensor on the current device (cached; dynamic scaling depends on kv_len)."""
        rs = self.config.rope_scaling
        key = kv_len if rs is not None and rs["type"] == "dynamic" and kv_len > self.config.max_position_embeddings else 0
        if key not in self._inv_freq:
            self._inv_freq[key] = paddle.to_tensor(rope_inv_freq(self.config, kv_len))
        return self._inv_freq[key]

    def forward(self, input_ids, position_ids, attn_mask, cache=None, output_hidden_states=False, last_only=False):
        """Hidden states after the final norm ([B, L, H], or [B, 1, H] with last_only) and, if asked, all of them."""
        past = cache.length if cache is not None else 0
        inv_freq = self.inv_freq(past + input_ids.shape[1])
        hidden = self.embed_tokens(input_ids)
        if hidden.dtype != self.norm.weight.dtype:  # bf16-stored embedding (quantization.py): looked up, then cast
            hidden = hidden.astype(self.norm.weight.dtype)
        q_len = input_ids.shape[1]
        if paddle.is_grad_enabled():
            hidden = padding_row_frozen(hidden, input_ids, self.config.pad_token_id)
        training = self.training
        hidden = self.dropout(hidden)
        if attn_mask is None and q_len > 1 and (
            attention_backend(hidden.dtype, past > 0, self.config.head_dim, training, cache is not None) != "flash"
        ):
            slots = cache.capacity if cache is not None else q_len  # the causal mask, built once for all layers
            attn_mask = additive_mask(paddle.ones([1, slots], "int64"), q_len, past, hidden.dtype)
        fused = (
            q_len == 1
            and not training
            and cache is not None
            and attn_mask is not None
            and attn_mask.dtype == paddle.float32
            and self.config.hidden_act == "silu"
            and self.config.tensor_parallel_degree == 1  # the op runs whole layers: no all-reduce inside it
            and ops.decoder_step_available(hidden)
        )
        all_hidden = []
        if fused and not output_hidden_states:  # every layer in one op call
            weights = [w for layer in self.layers for w in layer._step_weights()]
            hidden = ops.decoder_step(hidden, weights, cache.keys, cache.values, past, position_ids, inv_freq,
                                      attn_mask, self.config.rms_norm_eps)
        else:
            for layer in self.layers:
                if output_hidden_states:
                    all_hidden.append(hidden)
                if fused:
                    hidden = layer.decode_step(hidden, position_ids, inv_freq, attn_mask, cache)
                elif training and self.gradient_checkpointing:
                    hidden = recompute(layer, hidden, position_ids, inv_freq, attn_mask, None, use_reentrant=False)
                else:
                    hidden = layer(hidden, position_ids, inv_freq, attn_mask, cache)
        if cache is not None:
            cache.length = past + input_ids.shape[1]
        if last_only:
            hidden = hidden[:, -1:]
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        return hidden, all_hidden


def _integer_tensor(value, name):
    """value (tensor, array or list) as an integer paddle.Tensor; ValueError for floats and other non-integers."""
    if not isinstance(value, paddle.Tensor):
        array = np.asarray(value)
        if array.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
        return paddle.to_tensor(array.astype(np.int64))
    if value.dtype not in (paddle.int64, paddle.int32, paddle.int16, paddle.int8, paddle.uint8):
        raise ValueError(f"{name} must hold integers, got dtype {value.dtype}")
    return value


# rows (token positions) per chunk of the loss: the float32 logits of one chunk are [LOSS_CHUNK_ROWS, vocab]
LOSS_CHUNK_ROWS = 512


class _ChunkedCrossEntropy(PyLayer):
    """Summed cross-entropy of hidden [N, H] @ weight [H, V] (float32 logits) against targets [N] (-100 = ignored),
    chunk_rows rows at a time. The loss is a scalar, so its gradients are known up to the incoming factor while the
    forward still holds a chunk's logits: ``ops.softmax_xent_`` turns them in place into softmax minus one-hot (zero
    on ignored rows), and the forward accumulates dhidden = d @ weight^T and dweight = hidden^T @ d when gradients
    are recorded; the backward only scales them. The logits are never recomputed, and in float32 (no autocast)
    every chunk's logits are written into one buffer and dweight is accumulated in place (``addmm_``): the loop allocates
    no [rows, V] tensor of its own, so the heap does not grow chunk after chunk around blocks that outlive them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows, recording):
        need_h, need_w = recording and not hidden.stop_gradient, recording and not weight.stop_gradient
        dhidden = paddle.empty(hidden.shape, "float32") if need_h else None
        dweight = None
        rows = min(chunk_rows, targets.shape[0])
        plain = weight.dtype == hidden.dtype == paddle.float32 and not paddle.amp.is_autocast_enabled()
        buffer = paddle.empty([rows, weight.shape[1]], "float32") if plain else None  # (autocast: bf16 products)
        total = paddle.zeros([], "float32")
        for i in range(0, targets.shape[0], chunk_rows):
            h = hidden[i: i + chunk_rows]
            if buffer is not None:
                logits = paddle.matmul(h, weight, out=buffer[: h.shape[0]])
            else:
                logits = to_float32(paddle.matmul(h, weight))
            total = total + ops.softmax_xent_(logits, targets[i: i + chunk_rows]).sum()
            d = logits if logits.dtype == weight.dtype else logits.astype(weight.dtype)  # the gradient from here on
            if need_h:
                dhidden[i: i + chunk_rows] = to_float32(paddle.matmul(d, weight, transpose_y=True))
            if need_w and dweight is None:
                dweight = to_float32(paddle.matmul(h, d, transpose_x=True))
            elif need_w and plain:
                dweight.addmm_(h.t(), d)
            elif need_w:
                dweight.add_(to_float32(paddle.matmul(h, d, transpose_x=True)))
        ctx.grads = (dhidden.astype(hidden.dtype) if need_h else None,
                     dweight.astype(weight.dtype) if need_w else None)
        return total

    @staticmethod
    def backward(ctx, grad):
        dhidden, dweight = ctx.grads
        return tuple(None if g is None else g * grad.astype(g.dtype) for g in (dhidden, dweight))


def causal_lm_loss(hidden, lm_head_weight, labels, chunk_rows=LOSS_CHUNK_ROWS):
    """The original's loss: mean cross-entropy of ``logits[:, :-1]`` against ``labels[:, 1:]`` over the targets
    that are not -100, in float32. The logits are computed chunk_rows rows at a time and, while gradients are
    recorded, turned into the gradients right away (``_ChunkedCrossEntropy``), so the full [B, L, V] float32 logits
    never exist."""
    hidden = hidden[:, :-1].reshape([-1, hidden.shape[-1]])
    targets = labels[:, 1:].reshape([-1]).astype("int64")
    count = int((targets != -100).astype("int64").sum())
    total = _ChunkedCrossEntropy.apply(hidden, lm_head_weight, targets, chunk_rows, paddle.is_grad_enabled())
    return total / count if count else total * float("nan")


class Emu3ForCausalLM(Emu3GenerationMixin, PretrainedModel):
    config_class = Emu3Config
    _quantizable_linear = Emu3Linear
    _tp_plan = {"lm_head": "vocab"}  # with config.base_model_tp_plan: see ``from_pretrained(tensor_parallel_degree=)``

    def __init__(self, config):
        super().__init__(config)
        self.model = Emu3Model(config)
        self.lm_head = Emu3Linear(config.hidden_size, config.vocab_size)

    @classmethod
    def _map_checkpoint_key(cls, key):
        """Original keys pass; transformers' -hf names (``model.text_model.*``, ``text_model.model.*``) are mapped and
        the vision tokenizer's weights of a full -hf checkpoint (``model.vqmodel.*``, ``vqmodel.*``) are dropped."""
        if re.match(r"^(model\.)?vqmodel\.", key):
            return None
        for prefix in ("model.text_model.", "text_model.model."):
            if key.startswith(prefix):
                return "model." + key[len(prefix):]
        if key == "text_model.lm_head.weight":
            return "lm_head.weight"
        return key

    @property
    def dtype(self):
        """The compute dtype (the final norm's; the linear weights may be stored in bf16 or int8)."""
        return self.model.norm.weight.dtype

    def gradient_checkpointing_enable(self):
        """Recompute each decoder layer in the backward pass (training only) instead of keeping its activations."""
        self.model.gradient_checkpointing = True

    def gradient_checkpointing_disable(self):
        self.model.gradient_checkpointing = False

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache=False,
        output_hidden_states=False,
        labels=None,
    ):
        """Logits [B, L, V] (float32) of every position; with labels, the loss instead (``.logits`` is None).

        attention_mask: [B, past + L] of 1 (token) / 0 (padding), default all ones. position_ids: [B, L], default
        past..past+L-1 (as the original's plain forward, whatever the padding). past_key_values: an Emu3KVCache
        from an earlier call with use_cache=True (returned in ``.past_key_values``). labels: [B, L] int64 target ids,
        -100 where no loss is taken: ``.loss`` is the float32 mean cross-entropy of ``logits[:, :-1]`` against
        ``labels[:, 1:]`` over the non-ignored targets (``causal_lm_loss``).
        """
        input_ids = _integer_tensor(input_ids, "input_ids")
        if input_ids.ndim != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
            raise ValueError(f"input_ids must be a non-empty [batch, length] array, got shape {list(input_ids.shape)}")
        check_token_ids(input_ids, self.config.vocab_size, "input_ids")
        bsz, q_len = input_ids.shape
        cache = past_key_values
        if cache is not None and not isinstance(cache, Emu3KVCache):
            raise ValueError("past_key_values must be the Emu3KVCache returned by an earlier forward with use_cache=True")
        if cache is not None and cache.keys[0].shape[0] != bsz:
            raise ValueError(f"past_key_values holds {cache.keys[0].shape[0]} rows but input_ids has {bsz}")
        if cache is None and use_cache:
            cache = Emu3KVCache.for_model(self.config, bsz, q_len, self.dtype)
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = paddle.arange(past, past + q_len, dtype="int64").unsqueeze(0).expand([bsz, q_len])
        else:
            position_ids = _integer_tensor(position_ids, "position_ids")
            if list(position_ids.shape) != [bsz, q_len]:
                raise ValueError(f"position_ids must have shape {[bsz, q_len]}, got {list(position_ids.shape)}")
            if int(position_ids.min()) < 0:
                raise ValueError(f"position_ids must be >= 0, got a minimum of {int(position_ids.min())}")
        if attention_mask is None:
            key_mask = paddle.ones([bsz, past + q_len], "int64")
        else:
            key_mask = paddle.to_tensor(attention_mask) if not isinstance(attention_mask, paddle.Tensor) else attention_mask
            if list(key_mask.shape) != [bsz, past + q_len]:
                raise ValueError(
                    f"attention_mask must have shape {[bsz, past + q_len]} (past + new tokens), "
                    f"got {list(key_mask.shape)}"
                )
            if key_mask.dtype != paddle.bool and bool(((key_mask != 0) & (key_mask != 1)).any()):
                raise ValueError("attention_mask must hold only 1 (token) and 0 (padding)")
        attn_mask = None
        if cache is not None:
            cache.reserve(past + q_len)
            unfilled = cache.capacity - past - q_len
            if unfilled:
                key_mask = paddle.concat([key_mask.astype("int64"), paddle.zeros([bsz, unfilled], "int64")], axis=1)
            if past > 0 or unfilled or not bool(key_mask.astype("bool").all()):
                attn_mask = additive_mask(key_mask, q_len, past, self.dtype)
        elif not bool(key_mask.astype("bool").all()):
            attn_mask = additive_mask(key_mask, q_len, 0, self.dtype)
        if labels is not None:
            if self.config.tensor_parallel_degree > 1:
                raise ValueError("labels (training) need the whole model on each process: load it with "
                                 "tensor_parallel_degree=1 (fine-tuning runs data parallel)")
            if getattr(self.lm_head, "weight", None) is None or self.lm_head.weight.dtype != self.dtype:
                raise ValueError("labels (training) need weights in the compute dtype: load the model without "
                                 "quant_type and, on CPU, with dtype float32")
            labels = paddle.to_tensor(labels, dtype="int64") if not isinstance(labels, paddle.Tensor) else labels
            if list(labels.shape) != [bsz, q_len]:
                raise ValueError(f"labels must have the shape of input_ids {[bsz, q_len]}, got {list(labels.shape)}")
            bad = labels.numpy()
            bad = np.unique(bad[(bad != -100) & ((bad < 0) | (bad >= self.config.vocab_size))])
            if bad.size:
                raise ValueError(f"labels must be -100 or token ids below vocab_size {self.config.vocab_size}, "
                                 f"got {bad[:10].tolist()}")
        hidden, all_hidden = self.model(input_ids, position_ids, attn_mask, cache, output_hidden_states)
        if labels is not None:
            return Emu3CausalLMOutput(
                loss=causal_lm_loss(hidden, self.lm_head.weight, labels),
                hidden_states=all_hidden if output_hidden_states else None,
                past_key_values=cache if use_cache else None,
            )
        logits = to_float32(self.lm_head(hidden))
        return Emu3CausalLMOutput(
            logits=logits,
            hidden_states=all_hidden if output_hidden_states else None,
            past_key_values=cache if use_cache else None,
        )
