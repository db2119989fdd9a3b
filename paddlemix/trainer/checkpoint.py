"""Training checkpoints ``OUT/checkpoint-<step>/``, resumable exactly.

A checkpoint holds the model as ``save_pretrained`` writes it (``config.json`` + safetensors in the original
layout, so it loads with ``from_pretrained`` and with the original PyTorch code), ``optimizer.safetensors`` (AdamW's
moments and beta powers, and master weights when there are any, keyed by the parameters' structured names),
``trainer_state.json`` (step, the run's arithmetic, the log so far) and, written last, ``DONE``. Resuming picks the
newest checkpoint with ``DONE``, so a run killed while saving resumes from the one before. Nothing else needs
saving: the learning rate is a function of the step, and the sample order and random draws are functions of the
seed and the step (see ``trainer.py``).
"""

import json
import logging
import os
import re
import shutil

import numpy as np
import paddle

from ..models.safetensors_io import SafetensorsFile, save_file

logger = logging.getLogger(__name__)

DONE = "DONE"
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(output_dir, step):
    return os.path.join(output_dir, f"checkpoint-{step}")


def complete_checkpoints(output_dir):
    """(step, path) of every checkpoint under output_dir that has its DONE marker, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for entry in os.listdir(output_dir):
        m = _CHECKPOINT_RE.match(entry)
        path = os.path.join(output_dir, entry)
        if m and os.path.isfile(os.path.join(path, DONE)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir):
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def _optimizer_tensors(model, optimizer):
    """{"<structured name>/<accumulator>": tensor} of AdamW's state (plus "<name>/master_weight")."""
    by_tensor_name = {p.name: name for name, p in model.named_parameters()}
    out = {}
    for acc, per_param in optimizer._accumulators.items():
        for tensor_name, value in per_param.items():
            out[f"{by_tensor_name[tensor_name]}/{acc}"] = value
    for tensor_name, value in getattr(optimizer, "_master_weights", {}).items():
        out[f"{by_tensor_name[tensor_name]}/master_weight"] = value
    return out


def save_checkpoint(output_dir, step, model, optimizer, state, save_total_limit=None):
    """Write ``checkpoint-<step>`` (DONE last) and delete the oldest complete ones beyond save_total_limit."""
    path = checkpoint_dir(output_dir, step)
    if os.path.isdir(path):
        shutil.rmtree(path)  # an incomplete earlier attempt at this step
    model.save_pretrained(path)
    arrays = {key: value.astype("float32").numpy() if value.dtype == paddle.bfloat16 else value.numpy()
              for key, value in _optimizer_tensors(model, optimizer).items()}
    save_file(arrays, os.path.join(path, OPTIMIZER_NAME), {"format": "np"})
    with open(os.path.join(path, STATE_NAME), "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2)
    with open(os.path.join(path, DONE), "w", encoding="utf-8") as f:
        f.write(f"{step}\n")
    if save_total_limit:
        for _, old in complete_checkpoints(output_dir)[:-save_total_limit]:
            shutil.rmtree(old)
    logger.info("saved %s", path)
    return path


def load_trainer_state(path):
    with open(os.path.join(path, STATE_NAME), encoding="utf-8") as f:
        return json.load(f)


def load_optimizer_state(path, model, optimizer):
    """Fill AdamW's state from ``optimizer.safetensors`` of a checkpoint (created first, as the first step would)."""
    params = dict(model.named_parameters())
    optimizer._create_accumulators(paddle.static.default_main_program().global_block(), list(params.values()))
    current = _optimizer_tensors(model, optimizer)
    with SafetensorsFile(os.path.join(path, OPTIMIZER_NAME)) as st:
        saved = set(st.keys())
        if saved != set(current):
            missing, extra = sorted(set(current) - saved), sorted(saved - set(current))
            raise ValueError(f"{path}: the optimizer state does not match this model and optimizer "
                             f"(missing {missing[:5]}, unexpected {extra[:5]})")
        for key, tensor in current.items():
            value = np.asarray(st.get(key))
            if list(value.shape) != list(tensor.shape):
                raise ValueError(f"{path}: optimizer state {key} has shape {list(value.shape)}, "
                                 f"expected {list(tensor.shape)}")
            tensor.set_value(paddle.to_tensor(value).astype(tensor.dtype))
