"""The shared model base: ``from_pretrained(path_or_repo_id, dtype=...)`` and ``save_pretrained(dir)``.

Loading reads safetensors (one file, or an index plus shards) tensor by tensor into parameters that were created
lazily (``paddle.LazyGuard``), so no random initialisation runs and no second copy of the model is ever held.
Checkpoint keys are the original PyTorch ``state_dict()`` names; each model maps other layouts (transformers'
``-hf`` names) onto them in ``_map_checkpoint_key``. Layout conversion happens once, here:

* PyTorch ``nn.Linear`` weights are ``[out, in]``; Paddle's are ``[in, out]``: transposed on load and on save.
* BatchNorm ``running_mean`` / ``running_var`` are Paddle's ``_mean`` / ``_variance``; ``num_batches_tracked`` is
  accepted and dropped (it only matters for training with momentum=None).
* A tensor whose shape differs from the parameter only by size-1 axes (a Linear ``[out, in]`` loaded into a 1x1
  convolution ``[out, in, 1, 1]``) is reshaped.
"""

import copy
import json
import logging
import os

import numpy as np
import paddle
from paddle import nn

from .. import distributed
from . import tensor_parallel
from .configuration_utils import CONFIG_NAME, PretrainedConfig, resolve_model_dir
from .._cpu_tuning import returning_freed_memory
from .safetensors_io import CheckpointError, SafetensorsFile, bf16_to_f32, f32_to_bf16, save_file

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def on_gpu():
    return paddle.is_compiled_with_cuda() and paddle.get_device().startswith("gpu")


def resolve_dtype(dtype):
    """The dtype the model computes in. bf16/fp16 need a GPU: on CPU they are upcast to float32, with a log line.
    ``"auto"``: what suits the device, bfloat16 on a GPU and float32 (the only CPU compute dtype) on CPU."""
    if dtype is None:
        return "float32"
    if dtype == "auto":
        return "bfloat16" if on_gpu() else "float32"
    name = str(dtype).replace("paddle.", "")
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of auto, float32, bfloat16, float16")
    name = _DTYPES[name]
    if name != "float32" and not on_gpu():
        logger.warning(
            "dtype %s was asked for, but Paddle runs on CPU here, where only float32 kernels exist: "
            "loading the weights as float32 instead.",
            name,
        )
        return "float32"
    return name


def checkpoint_files(folder):
    """The safetensors files of a checkpoint folder and, per file, the keys the index assigns to it (or None)."""
    index = os.path.join(folder, WEIGHTS_INDEX_NAME)
    single = os.path.join(folder, WEIGHTS_NAME)
    if os.path.isfile(index):
        try:
            with open(index, "r", encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({type(e).__name__}: {e})") from None
        files = {}
        for key, fname in weight_map.items():
            files.setdefault(os.path.join(folder, fname), []).append(key)
        for path in files:
            if not os.path.isfile(path):
                raise CheckpointError(f"shard {os.path.basename(path)} named in {index} is missing")
        return files
    if os.path.isfile(single):
        return {single: None}
    present = sorted(os.listdir(folder))
    pickles = [f for f in present if f.endswith((".bin", ".pt", ".pth", ".pdparams", ".ckpt"))]
    hint = f" (found {pickles}: pickle checkpoints are not loaded; convert them to safetensors)" if pickles else ""
    raise CheckpointError(f"no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in {folder}{hint}")


_CHUNK_BYTES = 64 * 1024**2


def _convert(arr, st_dtype, target):
    """A numpy array in the target dtype (bfloat16 targets get uint16 bits)."""
    if target == "bfloat16":
        if st_dtype == "BF16":
            return arr
        return f32_to_bf16(arr.astype(np.float32, copy=False))
    if st_dtype == "BF16":
        arr = bf16_to_f32(arr)
    return arr.astype(target, copy=False)


def _read_tensor(st, key, shape, target, transpose, part=None):
    """The checkpoint tensor ``key`` as a contiguous numpy array of ``shape`` in ``target`` (bf16: uint16 bits).

    Converted (and, for Linear weights, transposed) in blocks of rows of about 64 MB, releasing each block's mapped
    file pages once copied: loading holds at most the result plus one block, never the whole tensor twice.
    part: (axis, start, stop) reads only that slice of the checkpoint tensor's axis 0 (rows) or 1 (columns), the
    tensor-parallel share of one rank; only the rows read are touched.
    """
    src = st.get(key)
    st_dtype = st.dtype(key)
    out = np.empty(shape, dtype=np.uint16 if target == "bfloat16" else np.dtype(target))
    rows = src.reshape(src.shape[0], -1) if src.ndim > 1 else src.reshape(-1, 1)
    first, last, cols = 0, rows.shape[0], slice(None)
    if part is not None:
        axis, start, stop = part
        if axis == 0:
            first, last = start, stop
        else:
            cols = slice(start, stop)
    width = len(range(*cols.indices(rows.shape[1])))
    flat = out.reshape(-1, last - first) if transpose else out.reshape(last - first, width)
    row_bytes = max(1, rows.shape[1] * src.itemsize)
    step = max(1, _CHUNK_BYTES // row_bytes)
    for r0 in range(first, last, step):
        r1 = min(r0 + step, last)
        block = _convert(rows[r0:r1, cols], st_dtype, target)
        if transpose:
            flat[:, r0 - first : r1 - first] = block.T
        else:
            flat[r0 - first : r1 - first] = block
        st.release(key, r0 * row_bytes, (r0 + step) * row_bytes)
    return out


class PretrainedModel(nn.Layer):
    config_class = PretrainedConfig
    # tensor parallelism (``tensor_parallel.py``): the base model's attribute name and the head's plan; None: the
    # model cannot be split
    base_model_prefix = "model"
    _tp_plan = None

    def __init__(self, config):
        super().__init__()
        self.config = config

    # ---------------------------------------------------------------- key layout
    @classmethod
    def _map_checkpoint_key(cls, key):
        """Checkpoint key -> original key. Override to accept other layouts. None drops the key."""
        return key

    @staticmethod
    def _original_to_paddle_name(key):
        if key.endswith(".num_batches_tracked"):
            return None
        if key.endswith(".running_mean"):
            return key[: -len("running_mean")] + "_mean"
        if key.endswith(".running_var"):
            return key[: -len("running_var")] + "_variance"
        return key

    @staticmethod
    def _paddle_to_original_name(name):
        if name.endswith("._mean"):
            return name[: -len("_mean")] + "running_mean"
        if name.endswith("._variance"):
            return name[: -len("_variance")] + "running_var"
        return name

    def _linear_weight_names(self):
        return {
            f"{prefix}.weight" if prefix else "weight"
            for prefix, layer in self.named_sublayers(include_self=True)
            if isinstance(layer, nn.Linear)
        }

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path_or_repo_id, dtype=None, config=None, tensor_parallel_degree=None,
                        tensor_parallel_rank=None, **config_overrides):
        """Load a checkpoint folder (or hub id).

        tensor_parallel_degree / tensor_parallel_rank (models with a tensor-parallel plan): split the model over
        the launched processes (defaults: PADDLE_TRAINERS_NUM / PADDLE_TRAINER_ID, i.e. 1 / 0 outside a launch);
        the process group is started here unless the caller already did, and each rank reads only its slices.
        """
        degree, rank = 1, 0
        if cls._tp_plan is not None:
            degree, rank = tensor_parallel.resolve(tensor_parallel_degree, tensor_parallel_rank)
        elif tensor_parallel_degree not in (None, 1):
            raise ValueError(f"{cls.__name__} has no tensor-parallel plan: load it with tensor_parallel_degree=1")
        if degree > 1:  # before anything that could fail on one rank only (the others would wait for it)
            distributed.init()
            path = str(path_or_repo_id)
            distributed.check_same(os.path.realpath(path) if os.path.exists(path) else path, "the model path")
        folder = resolve_model_dir(path_or_repo_id, None if config is not None else CONFIG_NAME)
        if config is None:
            config = cls.config_class.from_pretrained(folder, **config_overrides)
        if degree > 1:
            config = copy.deepcopy(config)  # the loaded model's config records its degree and rank
            tensor_parallel.check_degree(config, degree)
        target = resolve_dtype(dtype)
        files = checkpoint_files(folder)
        old = paddle.get_default_dtype()
        paddle.set_default_dtype(target)
        slices = {}
        try:
            with paddle.LazyGuard():
                model = cls(config)
                if degree > 1:
                    slices = tensor_parallel.apply_tensor_parallel(model, degree, rank)
        finally:
            paddle.set_default_dtype(old)
        with returning_freed_memory():
            model._load_checkpoint(files, target, slices)
        model.eval()
        logger.info("loaded %s from %s (%s%s)", cls.__name__, folder, target,
                    f", tensor parallel rank {rank} of {degree}" if degree > 1 else "")
        return model

    def _load_checkpoint(self, files, target, slices=None):
        """slices: {parameter name: (checkpoint axis, start, stop, full size)}: read only that part (tensor parallel)."""
        slices = slices or {}
        state = self.state_dict()
        linear = self._linear_weight_names()
        plan = []  # (file, key, name)
        unexpected, mismatched, seen = [], [], {}
        opened = {path: SafetensorsFile(path) for path in files}
        try:
            for path, keys in files.items():
                st = opened[path]
                file_keys = st.keys()
                if keys is not None:
                    missing_in_file = sorted(set(keys) - set(file_keys))
                    if missing_in_file:
                        raise CheckpointError(f"{path} lacks keys its index names: {missing_in_file[:10]}")
                    file_keys = keys
                for key in file_keys:
                    orig = self._map_checkpoint_key(key)
                    name = None if orig is None else self._original_to_paddle_name(orig)
                    if name is None:
                        continue
                    fname = os.path.basename(path)
                    if name not in state:
                        unexpected.append(f"{key} ({fname})")
                        continue
                    if name in seen:
                        raise CheckpointError(f"{key} ({fname}) and {seen[name]} both load into '{name}'")
                    seen[name] = f"{key} ({fname})"
                    shape = st.shape(key)
                    want = list(state[name].shape)
                    expect = want[::-1] if name in linear else want
                    if name in slices:
                        expect = list(expect)
                        expect[slices[name][0]] = slices[name][3]
                    if shape != expect and [s for s in shape if s != 1] != [s for s in expect if s != 1]:
                        mismatched.append(f"{key} ({fname}): checkpoint {shape}, model expects {expect}")
                        continue
                    plan.append((st, key, name, name in linear, slices.get(name)))
            missing = sorted(set(state) - set(seen))
            if missing or unexpected or mismatched:
                parts = []
                for title, items in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", mismatched)):
                    if items:
                        shown = "\n    ".join(items[:20]) + (f"\n    ... and {len(items) - 20} more" if len(items) > 20 else "")
                        parts.append(f"  {len(items)} {title} keys:\n    {shown}")
                raise CheckpointError(
                    f"checkpoint does not match {type(self).__name__} "
                    f"({', '.join(os.path.basename(p) for p in files)}):\n" + "\n".join(parts)
                )
            for st, key, name, is_linear, part in plan:
                param = state[name]
                want = str(param.dtype).replace("paddle.", "")
                arr = _read_tensor(st, key, list(param.shape), want, is_linear, part and part[:3])
                if want == "bfloat16":
                    param.set_value(paddle.to_tensor(arr).view(paddle.bfloat16))
                else:
                    param.set_value(arr)  # one copy, straight from numpy into the parameter
                del arr
        finally:
            for st in opened.values():
                st.close()

    # ---------------------------------------------------------------- saving
    def save_pretrained(self, save_dir, max_shard_size=5 * 1024**3):
        """Write ``config.json`` and safetensors in the original PyTorch layout (sharded above max_shard_size)."""
        if getattr(self.config, "tensor_parallel_degree", 1) > 1:
            raise ValueError("save_pretrained of a tensor-parallel model would write one rank's slices: load the "
                             "model with tensor_parallel_degree=1 to save it")
        os.makedirs(save_dir, exist_ok=True)
        self.config.save_pretrained(save_dir)
        linear = self._linear_weight_names()
        shards, current, size = [], {}, 0
        bf16 = set()
        for name, tensor in self.state_dict().items():
            key = self._paddle_to_original_name(name)
            if tensor.dtype == paddle.bfloat16:
                arr = tensor.view(paddle.uint16).numpy() if hasattr(tensor, "view") else None
                bf16.add(key)
            else:
                arr = tensor.numpy()
            if name in linear:
                arr = np.ascontiguousarray(arr.T)
            if current and size + arr.nbytes > max_shard_size:
                shards.append(current)
                current, size = {}, 0
            current[key] = arr
            size += arr.nbytes
        shards.append(current)
        meta = {"format": "pt"}
        if len(shards) == 1:
            save_file(shards[0], os.path.join(save_dir, WEIGHTS_NAME), meta, bf16)
            return
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(save_dir, fname), meta, bf16 & set(shard))
            weight_map.update({k: fname for k in shard})
        total = sum(a.nbytes for s in shards for a in s.values())
        with open(os.path.join(save_dir, WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
