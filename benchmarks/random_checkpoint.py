"""A random checkpoint of any size written tensor by tensor: bf16 safetensors shards plus their index, in the
original key layout, without ever holding more than one block of rows in memory (the real8b suite's 17 GB
checkpoint of Emu3-8B's exact shape on a machine with 24 GB of RAM). Only the standard library and numpy.

Values: Linear weights (2-D keys ending in ``_proj.weight`` or ``lm_head.weight``) N(0, 1/fan_in) with fan_in the
second axis of the PyTorch ``[out, in]`` layout, embeddings N(0, 1), 1-D norm scales 1 + N(0, 0.02), so the
activations of the random model stay in a sane range.
"""

import json
import os

import numpy as np

BLOCK_ELEMENTS = 1 << 24  # rows generated at a time: 64 MB of float32


def _values(key, shape, rows, rng):
    """Random float32 rows [rows, *shape[1:]] of the tensor `key`."""
    if len(shape) == 1:
        return (1.0 + 0.02 * rng.standard_normal(rows, dtype=np.float32)).astype(np.float32)
    block = rng.standard_normal((rows, *shape[1:]), dtype=np.float32)
    if key.endswith("embed_tokens.weight"):
        return block
    return block * np.float32(1.0 / np.sqrt(shape[1]))


def _header(tensors):
    """The safetensors header bytes (padded to 8) for [(key, shape)] of bf16 tensors, and the tensors' byte size."""
    meta, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, shape in tensors:
        nbytes = 2 * int(np.prod(shape, dtype=np.int64))
        meta[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, offset


def write_random_checkpoint(tensors, out_dir, seed=0, shard_bytes=5 * 1024**3):
    """Write [(key, shape)] (PyTorch layout) as bf16 shards ``model-0000i-of-0000n.safetensors`` of at most about
    shard_bytes each (a tensor is never split) and ``model.safetensors.index.json``. Returns the total bytes."""
    os.makedirs(out_dir, exist_ok=True)
    shards, current, size = [], [], 0
    for key, shape in tensors:
        nbytes = 2 * int(np.prod(shape, dtype=np.int64))
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((key, list(shape)))
        size += nbytes
    shards.append(current)
    rng = np.random.default_rng(seed)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, nbytes = _header(shard)
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(header)
            for key, shape in shard:
                row = int(np.prod(shape[1:], dtype=np.int64))
                step = max(1, BLOCK_ELEMENTS // max(row, 1))
                for r0 in range(0, shape[0], step):
                    block = _values(key, shape, min(step, shape[0] - r0), rng)
                    f.write((block.view(np.uint32) >> 16).astype("<u2").tobytes())  # bf16: the high half
                weight_map[key] = name
        total += nbytes
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    return total
