"""Token-id validation shared by the language model's forward pass, ``generate``, the tokenizer and the processor.

An id outside ``[0, vocab_size)`` would otherwise reach Paddle's embedding kernel (an opaque InvalidArgument error on
CPU, a device-side fault on GPU) or, for negative ids, silently read another row.
"""

import numpy as np
import paddle

SHOWN = 8  # offending ids named in the error message


def check_token_ids(ids, vocab_size, name="input_ids"):
    """Raise ValueError naming the ids of ``ids`` outside ``[0, vocab_size)`` (negative ones included).

    ids: a paddle.Tensor, a numpy array or a (nested) list of integers. A tensor costs one host read (its min and
    max) when every id is valid; the offending ids are gathered only on the error path. Returns None.
    """
    if isinstance(ids, paddle.Tensor):
        if ids.dtype not in (paddle.int64, paddle.int32, paddle.int16, paddle.int8, paddle.uint8):
            raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
        if ids.size == 0:
            return
        lo, hi = paddle.stack([ids.min().astype("int64"), ids.max().astype("int64")]).numpy().tolist()
        if lo >= 0 and hi < vocab_size:
            return
        ids = ids.numpy()
    array = np.asarray(ids)
    if array.size == 0:
        return
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer token ids, got dtype {array.dtype}")
    bad = (array < 0) | (array >= vocab_size)
    if bad.any():
        values = np.unique(array[bad])
        where = [list(map(int, p)) for p in np.argwhere(bad)[:SHOWN]]
        more = f" (and {values.size - SHOWN} more)" if values.size > SHOWN else ""
        raise ValueError(
            f"{name} holds token ids out of range [0, {vocab_size}): {values[:SHOWN].tolist()}{more} at positions "
            f"{where}{' ...' if int(bad.sum()) > SHOWN else ''}"
        )
