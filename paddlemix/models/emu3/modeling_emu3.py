"""The Emu3 language model: a Llama-style decoder (RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU).

Parameter names equal the original checkpoint keys (``model.layers.0.self_attn.q_proj.weight``, ``lm_head.weight``),
so the original safetensors load as they are; transformers' ``-hf`` names are mapped in ``_map_checkpoint_key``.
"""

import logging
import re
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from ... import ops
from ..model_utils import PretrainedModel, on_gpu
from .configuration_emu3 import Emu3Config

logger = logging.getLogger(__name__)

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}
_LOGGED_BACKENDS = set()


def attention_backend(dtype, needs_mask):
    """The one place that picks the attention kernel: "flash" or "sdpa".

    Flash attention (native GQA, causal prefill, no mask argument) needs a GPU of compute capability >= 8, half
    precision and no padding mask; everything else (CPU, float32, left-padded batches) uses Paddle's
    scaled_dot_product_attention. Each choice is logged once.
    """
    backend = "sdpa"
    if needs_mask is False and dtype in (paddle.float16, paddle.bfloat16) and on_gpu():
        if paddle.device.cuda.get_device_capability()[0] >= 8:
            backend = "flash"
    if backend not in _LOGGED_BACKENDS:
        _LOGGED_BACKENDS.add(backend)
        logger.info("Emu3 attention: using %s", "paddle flash_attention" if backend == "flash" else "paddle sdpa")
    return backend


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


class Emu3KVCache:
    """Keys and values of every layer, ``[B, capacity, kv_heads, head_dim]``, allocated once.

    ``length`` positions are filled. ``update`` writes a layer's new keys/values in place by slice assignment and
    returns the filled part; the model advances ``length`` once per forward. Capacity grows only when a caller
    outruns it (generation allocates prompt + new tokens up front, so it never grows there).
    """

    def __init__(self, num_layers, batch_size, capacity, num_kv_heads, head_dim, dtype):
        shape = [batch_size, capacity, num_kv_heads, head_dim]
        self.keys = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.values = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.length = 0

    @classmethod
    def for_model(cls, config, batch_size, capacity, dtype):
        return cls(config.num_hidden_layers, batch_size, capacity, config.num_key_value_heads, config.head_dim, dtype)

    def update(self, layer_idx, key, value):
        start = self.length
        end = start + key.shape[1]
        capacity = self.keys[layer_idx].shape[1]
        if end > capacity:
            extra = max(end, 2 * capacity) - capacity
            pad_shape = [key.shape[0], extra] + list(key.shape[2:])
            self.keys[layer_idx] = paddle.concat([self.keys[layer_idx], paddle.zeros(pad_shape, key.dtype)], axis=1)
            self.values[layer_idx] = paddle.concat(
                [self.values[layer_idx], paddle.zeros(pad_shape, value.dtype)], axis=1
            )
        self.keys[layer_idx][:, start:end] = key
        self.values[layer_idx][:, start:end] = value
        return self.keys[layer_idx][:, :end], self.values[layer_idx][:, :end]


@dataclass
class Emu3CausalLMOutput:
    logits: paddle.Tensor
    hidden_states: Optional[List[paddle.Tensor]] = None
    past_key_values: Optional[Emu3KVCache] = None


class Emu3RMSNorm(nn.Layer):
    def __init__(self, hidden_size, eps):
        super().__init__()
        self.weight = self.create_parameter([hidden_size], default_initializer=nn.initializer.Constant(1.0))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        return ops.rms_norm(hidden_states, self.weight, self.variance_epsilon)


class Emu3MLP(nn.Layer):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias_attr=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias_attr=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias_attr=False)
        self.act_fn = _ACTIVATIONS[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Emu3Attention(nn.Layer):
    """Grouped-query attention: KV head j serves the consecutive query heads j*g .. (j+1)*g-1."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias_attr=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias_attr=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias_attr=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias_attr=False)

    def forward(self, hidden_states, position_ids, inv_freq, attn_mask, cache):
        """attn_mask: None (plain causal) or an additive float mask [B, 1, L, kv_len]."""
        bsz, q_len = hidden_states.shape[0], hidden_states.shape[1]
        q = self.q_proj(hidden_states).reshape([bsz, q_len, self.num_heads, self.head_dim])
        k = self.k_proj(hidden_states).reshape([bsz, q_len, self.num_kv_heads, self.head_dim])
        v = self.v_proj(hidden_states).reshape([bsz, q_len, self.num_kv_heads, self.head_dim])
        q, k = ops.rotary_embedding(q, k, position_ids, inv_freq)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        if attention_backend(q.dtype, attn_mask is not None) == "flash":
            out = F.flash_attention.flash_attention(q, k, v, causal=q_len > 1, training=False)[0]
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None and q_len > 1, training=False
            )
        return self.o_proj(out.reshape([bsz, q_len, self.num_heads * self.head_dim]))


class Emu3DecoderLayer(nn.Layer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = Emu3Attention(config, layer_idx)
        self.mlp = Emu3MLP(config)
        self.input_layernorm = Emu3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = Emu3RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states, position_ids, inv_freq, attn_mask, cache):
        h = hidden_states + self.self_attn(
            self.input_layernorm(hidden_states), position_ids, inv_freq, attn_mask, cache
        )
        return h + self.mlp(self.post_attention_layernorm(h))


class Emu3Model(nn.Layer):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.LayerList([Emu3DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = Emu3RMSNorm(config.hidden_size, config.rms_norm_eps)
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
        all_hidden = []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden = layer(hidden, position_ids, inv_freq, attn_mask, cache)
        if cache is not None:
            cache.length = past + input_ids.shape[1]
        if last_only:
            hidden = hidden[:, -1:]
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        return hidden, all_hidden


def additive_mask(key_mask, q_len, past_len, dtype):
    """[B, 1, q_len, past_len + q_len] additive mask: causal, and keys where key_mask is 0 hidden.

    Hidden entries hold the dtype's lowest finite value (not -inf), so a query row with no visible key gives a
    uniform softmax instead of NaN, as the original's eager attention does.
    """
    kv_len = past_len + q_len
    q_pos = paddle.arange(past_len, kv_len, dtype="int64").unsqueeze(-1)
    k_pos = paddle.arange(kv_len, dtype="int64").unsqueeze(0)
    visible = (k_pos <= q_pos).unsqueeze(0) & (key_mask.astype("bool").unsqueeze(1))  # [B, q, kv]
    low = paddle.full([], float(paddle.finfo(dtype).min), dtype=dtype)
    zero = paddle.zeros([], dtype=dtype)
    return paddle.where(visible, zero, low).unsqueeze(1)


class Emu3ForCausalLM(PretrainedModel):
    config_class = Emu3Config

    def __init__(self, config):
        super().__init__(config)
        self.model = Emu3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias_attr=False)

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
        return self.lm_head.weight.dtype

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache=False,
        output_hidden_states=False,
    ):
        """Logits [B, L, V] (float32) of every position.

        attention_mask: [B, past + L] of 1 (token) / 0 (padding), default all ones. position_ids: [B, L], default
        past..past+L-1 (as the original's plain forward, whatever the padding). past_key_values: an Emu3KVCache
        from an earlier call with use_cache=True (returned in ``.past_key_values``).
        """
        input_ids = paddle.to_tensor(input_ids, dtype="int64") if not isinstance(input_ids, paddle.Tensor) else input_ids
        if input_ids.ndim != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
            raise ValueError(f"input_ids must be a non-empty [batch, length] array, got shape {list(input_ids.shape)}")
        bsz, q_len = input_ids.shape
        cache = past_key_values
        if cache is not None and not isinstance(cache, Emu3KVCache):
            raise ValueError("past_key_values must be the Emu3KVCache returned by an earlier forward with use_cache=True")
        if cache is None and use_cache:
            cache = Emu3KVCache.for_model(self.config, bsz, q_len, self.model.embed_tokens.weight.dtype)
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = paddle.arange(past, past + q_len, dtype="int64").unsqueeze(0).expand([bsz, q_len])
        else:
            position_ids = paddle.to_tensor(position_ids, dtype="int64") if not isinstance(position_ids, paddle.Tensor) else position_ids
            if list(position_ids.shape) != [bsz, q_len]:
                raise ValueError(f"position_ids must have shape {[bsz, q_len]}, got {list(position_ids.shape)}")
        attn_mask = None
        if attention_mask is not None:
            attention_mask = paddle.to_tensor(attention_mask) if not isinstance(attention_mask, paddle.Tensor) else attention_mask
            if list(attention_mask.shape) != [bsz, past + q_len]:
                raise ValueError(
                    f"attention_mask must have shape {[bsz, past + q_len]} (past + new tokens), "
                    f"got {list(attention_mask.shape)}"
                )
            if past > 0 or not bool(attention_mask.astype("bool").all()):
                attn_mask = additive_mask(attention_mask, q_len, past, self.model.embed_tokens.weight.dtype)
        elif past > 0 and q_len > 1:
            attn_mask = additive_mask(paddle.ones([bsz, past + q_len], "int64"), q_len, past, self.dtype)
        hidden, all_hidden = self.model(input_ids, position_ids, attn_mask, cache, output_hidden_states)
        logits = self.lm_head(hidden).astype("float32")
        return Emu3CausalLMOutput(
            logits=logits,
            hidden_states=all_hidden if output_hidden_states else None,
            past_key_values=cache if use_cache else None,
        )

    def last_logits(self, input_ids, position_ids, attn_mask, cache):
        """Float32 logits [B, V] of the last position only (what generation needs)."""
        hidden, _ = self.model(input_ids, position_ids, attn_mask, cache, last_only=True)
        return self.lm_head(hidden[:, 0]).astype("float32")

    def generate(self, input_ids, **kwargs):
        """Text or image generation; see ``generation_emu3.generate`` for the arguments."""
        from .generation_emu3 import generate

        return generate(self, input_ids, **kwargs)
