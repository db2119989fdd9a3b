"""Low-memory weight storage for a language model: bf16 weights on CPU and weight-only int8.

The storage dtype is kept apart from the compute dtype (gpt-fast stores int8 and computes in the activation dtype):

* ``from_pretrained(path, dtype="bfloat16")`` on CPU with the compiled extension keeps the linear weights, the
  embedding and the lm_head in bf16 while everything computes in float32: the CPU kernels (``ops.linear``,
  ``ops.decoder_step``) widen each weight to float32 in registers as they read it, the prefill's products widen a
  block of weight columns at a time before Paddle's matmul, the embedding is looked up in bf16 and cast.
* ``from_pretrained(path, quant_type="weight_only_int8")`` (PaddleNLP's name) stores each linear weight as int8 with
  one float32 scale per output channel (symmetric: ``scale = max |w| / 127``, ``q = round(w / scale)``), quantized
  while the checkpoint is read, a block of output channels at a time, so no float32 copy of a whole weight exists.
  ``save_pretrained`` writes ``<name>.quant_weight`` (int8, ``[out, in]`` as the original's Linear weights) and
  ``<name>.quant_scale`` (float32 ``[out]``), PaddleNLP's key names, plus ``quantization_config`` in config.json;
  such a folder loads back quantized without re-quantizing.

A model opts in with the class attribute ``_quantizable_linear`` (its linear layer class, whose ``forward`` is
``ops.linear(x, self.weight)``); ``convert_for_runtime`` swaps the layers of a model built under
``paddle.LazyGuard`` before the checkpoint is read (gpt-fast's ``convert_for_runtime``).
"""

import logging

import numpy as np
import paddle
from paddle import nn

from .. import ops

logger = logging.getLogger(__name__)

QUANT_TYPES = ("weight_only_int8",)
INT8_MAX = 127


def quantize_rows(w):
    """Symmetric per-row int8 quantization of a float32 array w [rows, cols]: (q int8 [rows, cols], scale float32
    [rows]) with ``scale = max |w[r]| / 127`` and ``q = round(w / scale)``, so ``|w - q * scale| <= scale / 2``
    element by element. An all-zero row gets scale 0 and q 0."""
    w = np.asarray(w, dtype=np.float32)
    scale = (np.abs(w).max(axis=1) / np.float32(INT8_MAX)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = np.clip(np.rint(w / safe[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


class WeightOnlyInt8Linear(nn.Layer):
    """A bias-free linear layer with an int8 weight and one float32 scale per output channel (gpt-fast's
    ``WeightOnlyInt8Linear``): ``y = (x @ quant_weight) * quant_scale``. ``quant_weight`` is ``[in, out]`` (Paddle's
    layout, transposed on load and save as any Linear weight), ``quant_scale`` ``[out]``.

    On CPU ``ops.linear`` runs it (the extension's kernel for the few rows of a decode step, else blocks of the weight
    widened to float32 and Paddle's matmul). On GPU it goes through Paddle's ``weight_only_linear``, with the weight
    re-packed once by ``paddle.nn.quant.weight_quantize`` (its layout depends on the GPU architecture); that path is
    written against Paddle's documented API but was not run here (no GPU build of Paddle)."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.quant_weight = self.create_parameter(
            [in_features, out_features], dtype="int8", default_initializer=nn.initializer.Constant(0)
        )
        self.quant_scale = self.create_parameter(
            [out_features], dtype="float32", default_initializer=nn.initializer.Constant(0.0)
        )
        self.quant_weight.stop_gradient = True
        self.quant_scale.stop_gradient = True

    def forward(self, x):
        if not x.place.is_cpu_place():
            return self._gpu_forward(x)
        return ops.linear(x, self.quant_weight, self.quant_scale)

    def column_slice(self, start):
        """A function x -> the outputs start.. of this layer (contiguous copies of those weight columns and scales,
        made once): generation's lm_head over the visual tokens only."""
        weight, scale = self.quant_weight[:, start:].contiguous(), self.quant_scale[start:].contiguous()
        return lambda x: ops.linear(x, weight, scale)

    def _gpu_forward(self, x):
        packed = self.__dict__.get("_gpu_packed")
        if packed is None:
            dense = self.quant_weight.astype(x.dtype) * self.quant_scale.astype(x.dtype)
            packed = paddle.nn.quant.weight_quantize(dense, algo="weight_only_int8")
            self.__dict__["_gpu_packed"] = packed
        return paddle.nn.quant.weight_only_linear(x, packed[0], weight_scale=packed[1], weight_dtype="int8")


def resolve_storage(model_cls, dtype, quant_type, config):
    """The weight storage of a model to load: None (the compute dtype), "bfloat16" or a quant type.

    quant_type: None or one of QUANT_TYPES; a checkpoint saved quantized (``quantization_config`` in its config)
    loads with its own quant type. bf16 storage is chosen for ``dtype`` bfloat16 on CPU when the model supports it
    and the compiled extension is active (its kernels read bf16 weights); otherwise the caller's float32 fallback
    (with its warning) stays."""
    saved = (getattr(config, "quantization_config", None) or {}).get("quant_type")
    if quant_type is not None and quant_type not in QUANT_TYPES:
        raise ValueError(f"unsupported quant_type {quant_type!r}; use one of {', '.join(QUANT_TYPES)} (or None)")
    if saved is not None and saved not in QUANT_TYPES:
        raise ValueError(f"the checkpoint's quantization_config names an unsupported quant_type {saved!r}")
    if saved is not None and quant_type is not None and quant_type != saved:
        raise ValueError(f"the checkpoint is already quantized as {saved}; it cannot be loaded as {quant_type}")
    quant_type = quant_type or saved
    supported = getattr(model_cls, "_quantizable_linear", None) is not None
    if quant_type is not None:
        if not supported:
            raise ValueError(f"{model_cls.__name__} does not support quant_type (only the language model does)")
        return quant_type
    name = str(dtype).replace("paddle.", "") if dtype is not None else None
    cpu = not (paddle.is_compiled_with_cuda() and paddle.get_device().startswith("gpu"))
    if supported and cpu and name in ("bfloat16", "bf16") and ops.extension() is not None:
        return "bfloat16"
    return None


def convert_for_runtime(model, storage):
    """Swap the storage of a model built under ``paddle.LazyGuard`` before its checkpoint is read: bf16 weights for
    its ``_quantizable_linear`` layers (storage "bfloat16"), or those layers replaced by ``WeightOnlyInt8Linear``
    (storage "weight_only_int8"); the embeddings become bf16 in both cases. Norms and everything else keep the
    compute dtype. Records ``quantization_config`` in the model's config for a quantized model."""
    linear_cls = type(model)._quantizable_linear
    for _, parent in list(model.named_sublayers(include_self=True)):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, linear_cls):
                if storage == "bfloat16":
                    child.weight = child.create_parameter(list(child.weight.shape), dtype="bfloat16")
                    child.weight.stop_gradient = True
                else:
                    in_features, out_features = child.weight.shape
                    setattr(parent, child_name, WeightOnlyInt8Linear(in_features, out_features))
            elif isinstance(child, nn.Embedding):
                child.weight = child.create_parameter(list(child.weight.shape), dtype="bfloat16")
                child.weight.stop_gradient = True
    if storage in QUANT_TYPES:
        model.config.quantization_config = {"quant_type": storage}
