"""The KV cache and the attention masks over it: what both the language model (``modeling_emu3``) and the decoding
loop (``generation_emu3``) need.

Imports run one way, as transformers' ``GenerationMixin``: modeling -> generation -> kv_cache, no cycle. This module
imports neither of the other two (only paddle), so the loop can build a cache and its masks without the model file.
"""

import paddle


class Emu3KVCache:
    """Keys and values of every layer, ``[B, kv_heads, capacity, head_dim]``, allocated once.

    ``length`` slots are filled. ``update`` writes a layer's new keys/values in place by slice assignment and returns
    the whole buffers: attention reads every slot and the mask hides the unfilled ones, so every step has the same
    shapes and nothing is copied. The model advances ``length`` once per forward. ``reserve`` grows the capacity
    only when a caller outruns it (generation allocates prompt + new tokens up front, so it never grows there).
    """

    def __init__(self, num_layers, batch_size, capacity, num_kv_heads, head_dim, dtype):
        shape = [batch_size, num_kv_heads, capacity, head_dim]
        self.keys = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.values = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.length = 0

    @classmethod
    def for_model(cls, config, batch_size, capacity, dtype):
        """The cache of a model; under tensor parallelism, of this rank's KV heads."""
        kv_heads = config.num_key_value_heads // config.tensor_parallel_degree
        return cls(config.num_hidden_layers, batch_size, capacity, kv_heads, config.head_dim, dtype)

    @property
    def capacity(self):
        return self.keys[0].shape[2]

    def reserve(self, length):
        if length <= self.capacity:
            return
        shape = list(self.keys[0].shape)
        shape[2] = max(length, 2 * self.capacity) - self.capacity
        for buffers in (self.keys, self.values):
            for i, t in enumerate(buffers):
                buffers[i] = paddle.concat([t, paddle.zeros(shape, t.dtype)], axis=2)

    def update(self, layer_idx, key, value):
        """key, value [B, L, Hk, D] of the slots length .. length+L-1; returns the full [B, Hk, capacity, D] buffers."""
        bsz, q_len, kv_heads, dim = key.shape
        if q_len == 1:
            key, value = key.reshape([bsz, kv_heads, 1, dim]), value.reshape([bsz, kv_heads, 1, dim])
        else:
            key, value = key.transpose([0, 2, 1, 3]), value.transpose([0, 2, 1, 3])
        self.keys[layer_idx][:, :, self.length: self.length + q_len] = key
        self.values[layer_idx][:, :, self.length: self.length + q_len] = value
        return self.keys[layer_idx], self.values[layer_idx]


def additive_mask(key_mask, q_len, past_len, dtype):
    """[B, 1, q_len, S] additive mask for queries at slots past_len .. past_len+q_len-1 over S = key_mask.shape[1]
    key slots: a key is visible when its slot is not after the query's (causal) and key_mask is 1 there.

    Hidden entries hold the dtype's lowest finite value (not -inf), so a query row with no visible key gives a
    uniform softmax instead of NaN, as the original's eager attention does. The mask is built in ``dtype`` (the
    model's), except float16, whose lowest value cannot absorb a score (``-65504 + score`` overflows to -inf): a
    float16 model gets a float32 mask, added to float32 scores (``ops.masked_softmax_``).
    """
    if dtype == paddle.float16:
        dtype = paddle.float32
    q_pos = paddle.arange(past_len, past_len + q_len, dtype="int64").unsqueeze(-1)
    k_pos = paddle.arange(key_mask.shape[1], dtype="int64").unsqueeze(0)
    visible = (k_pos <= q_pos).unsqueeze(0) & (key_mask.astype("bool").unsqueeze(1))  # [B, q, S]
    low = paddle.full([], float(paddle.finfo(dtype).min), dtype=dtype)
    zero = paddle.zeros([], dtype=dtype)
    return paddle.where(visible, zero, low).unsqueeze(1)


def to_float32(x):
    """x in float32 (no copy when it already is): the float32 scores and logits the model and the loop form."""
    return x if x.dtype == paddle.float32 else x.astype("float32")
