"""The fine-tuning loop: one function, ``train``, read top to bottom (nanoGPT's shape).

The arithmetic is the reference run's (transformers 4.44 ``Trainer`` + torch AdamW, see
``tests/../fixtures/public/sft/README.md``):

* each optimizer step takes one global batch of ``batch * accumulation * world`` samples; micro-batch ``j`` of it
  is samples ``j*batch .. (j+1)*batch-1``; rank ``r`` computes micro-batches ``r*accumulation ..
  (r+1)*accumulation-1``. So N ranks with accumulation 1 compute exactly what one process with accumulation N does;
* each micro-batch's mean loss is divided by the accumulation steps before backward, and data parallelism averages
  the gradients over the ranks: the step gradient is the mean of the micro-batch means;
* clipping as ``torch.nn.utils.clip_grad_norm_``, AdamW with decoupled weight decay on every weight except the
  norm weights, the learning rate a pure function of the step (``optimization.learning_rate_at``);
* the sample order of epoch ``e`` is ``numpy.random.default_rng(seed + e).permutation(n)`` or the explicit order
  given; the last incomplete global batch of an epoch is dropped;
* before each micro-batch, Paddle's and Python's random generators are seeded from (seed, step, micro-batch): the
  dropout masks and the dataset's ``null_prompt_prob`` draws depend only on them, so a resumed run and a run over
  several ranks draw what an uninterrupted single process draws.
"""

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import paddle
import paddle.distributed as dist
from tqdm import tqdm

from ..models.model_utils import checkpoint_files, on_gpu
from .checkpoint import latest_checkpoint, load_optimizer_state, load_trainer_state, save_checkpoint
from .datasets import collate
from .optimization import SCHEDULES, build_optimizer, clip_grad_norm_, learning_rate_at

logger = logging.getLogger(__name__)

SHARDING_LEVELS = {"stage1": "os", "stage2": "os_g", "stage3": "p_g_os"}
# config entries a checkpoint must share with the model it resumes into
_ARCH_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads")


@dataclass
class TrainingConfig:
    output_dir: str
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    min_learning_rate: Optional[float] = None
    lr_scheduler_type: str = "cosine_with_min_lr"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    gradient_checkpointing: bool = False
    bf16: bool = False
    save_steps: int = 0
    save_total_limit: Optional[int] = None
    logging_steps: int = 1
    seed: int = 42
    sharding: Optional[str] = None
    sample_order: Optional[List[List[int]]] = None  # per epoch, the dataset indices in the order to train on
    disable_tqdm: bool = False
    resume: bool = True

    def validate(self):
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise ValueError("give num_train_epochs > 0 or max_steps > 0")
        if self.lr_scheduler_type not in SCHEDULES:
            raise ValueError(f"lr_scheduler_type must be one of {SCHEDULES}, got {self.lr_scheduler_type!r}")
        if self.lr_scheduler_type == "cosine_with_min_lr" and self.min_learning_rate is None:
            raise ValueError("lr_scheduler_type cosine_with_min_lr needs min_learning_rate")
        if not self.learning_rate >= 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("learning_rate, warmup_steps and weight_decay must not be negative")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be at least 1, got {self.save_total_limit}")
        if self.bf16 and not on_gpu():
            raise ValueError("--bf16 True needs a GPU: Paddle's CPU build computes in float32 only (use --bf16 False)")
        if self.sharding is not None:
            if self.sharding not in SHARDING_LEVELS:
                raise ValueError(f"sharding must be one of {sorted(SHARDING_LEVELS)}, got {self.sharding!r}")
            if not on_gpu():
                raise ValueError("--sharding needs GPUs: Paddle's group-sharded training does not run on CPU "
                                 "(use plain data parallelism there)")


def sample_order(config, epoch, n):
    """Dataset indices of one epoch, in training order."""
    if config.sample_order is not None:
        return list(config.sample_order[epoch])
    return np.random.default_rng(config.seed + epoch).permutation(n).tolist()


def micro_batches(config, step, steps_per_epoch, n, world):
    """The global batch of optimizer step ``step`` as ``accumulation * world`` lists of dataset indices."""
    b = config.per_device_train_batch_size
    count = config.gradient_accumulation_steps * world
    epoch, k = divmod(step, steps_per_epoch)
    order = sample_order(config, epoch, n)[k * b * count: (k + 1) * b * count]
    return [order[j * b: (j + 1) * b] for j in range(count)]


def seed_micro_batch(seed, step, index):
    """Seed Paddle's and Python's generators for micro-batch ``index`` of optimizer step ``step``."""
    value = ((seed * 1_000_003 + step) * 65_537 + index) % (2**62)
    paddle.seed(value)
    random.seed(value)


def _check_sample_order(config, n, epochs_needed):
    order = config.sample_order
    if not isinstance(order, list) or not all(isinstance(e, list) for e in order):
        raise ValueError("sample_order must be a list of epochs, each a list of dataset indices")
    if len(order) < epochs_needed:
        raise ValueError(f"sample_order covers {len(order)} epoch(s), the run needs {epochs_needed}")
    for e, indices in enumerate(order):
        if len(indices) != n or not all(isinstance(i, int) and 0 <= i < n for i in indices):
            raise ValueError(f"sample_order epoch {e} must list {n} dataset indices in [0, {n})")


def _resume_into(model, path, expected):
    """Load a checkpoint's weights into model after checking that it belongs to this model and run."""
    saved = load_trainer_state(path).get("config", {})
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        ckpt_config = json.load(f)
    differ = [f"{k} {ckpt_config.get(k)} vs {getattr(model.config, k, None)}" for k in _ARCH_KEYS
              if ckpt_config.get(k) != getattr(model.config, k, None)]
    if differ:
        raise ValueError(f"{path} is a checkpoint of another model ({', '.join(differ)}); use another --output_dir")
    changed = {k: (saved.get(k), v) for k, v in expected.items() if saved.get(k) != v}
    if changed:
        raise ValueError(f"cannot resume from {path}: the run's settings changed "
                         + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
                         + "; use the same settings or another --output_dir")
    model._load_checkpoint(checkpoint_files(path), str(model.dtype).replace("paddle.", ""))


class _Loss(paddle.nn.Layer):
    """The model's loss as the forward output (``paddle.DataParallel`` finds the tensors to reduce for in the
    output, which must be a tensor, list or dict)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels):
        return self.model(input_ids, attention_mask=attention_mask, labels=labels).loss


def train(model, dataset, config):
    """Fine-tune ``model`` (an ``Emu3ForCausalLM``) on ``dataset``; returns the per-step log (list of dicts).

    Runs data parallel when started by ``paddle.distributed.launch`` with several processes. Checkpoints go to
    ``output_dir/checkpoint-<step>`` every ``save_steps`` steps; an earlier complete checkpoint there is resumed
    from; the final model is saved to ``output_dir``."""
    config.validate()
    world = dist.get_world_size()
    rank = dist.get_rank()
    n = len(dataset)
    b, accumulation = config.per_device_train_batch_size, config.gradient_accumulation_steps
    global_batch = b * accumulation * world
    steps_per_epoch = n // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"the dataset has {n} samples, fewer than one global batch of {global_batch} "
                         f"(per_device_train_batch_size {b} x gradient_accumulation_steps {accumulation} x "
                         f"{world} process(es))")
    if n % global_batch:
        logger.info("each epoch drops its last %d samples (%d is not a multiple of the global batch %d)",
                    n % global_batch, n, global_batch)
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(config.num_train_epochs * steps_per_epoch)
    if config.sample_order is not None:
        _check_sample_order(config, n, math.ceil(total_steps / steps_per_epoch))

    # ---- model, optimizer, resume
    arithmetic = {"world_size": world, "per_device_train_batch_size": b, "gradient_accumulation_steps": accumulation,
                  "seed": config.seed, "total_steps": total_steps, "n_samples": n}
    start_step, history = 0, []
    resume_path = latest_checkpoint(config.output_dir) if config.resume else None
    if resume_path is not None:
        if config.sharding:
            raise ValueError(f"resuming under --sharding is not supported; {resume_path} exists: use another "
                             "--output_dir")
        state = load_trainer_state(resume_path)
        _resume_into(model, resume_path, arithmetic)
        start_step, history = state["step"], state["log_history"]
        logger.info("resuming from %s (step %d of %d)", resume_path, start_step, total_steps)
    model.train()
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    save_steps = config.save_steps
    if config.sharding and save_steps:
        save_steps = 0
        logger.warning("--sharding: no intermediate checkpoints (their optimizer state is sharded; resuming under "
                       "sharding is not supported); the final model is saved")
    grad_clip = None
    if config.sharding and config.max_grad_norm > 0:
        grad_clip = paddle.nn.ClipGradByGlobalNorm(config.max_grad_norm)
        logger.info("--sharding: clipping by Paddle's ClipGradByGlobalNorm (coef max/max(norm, max), the norm "
                    "over the shards)")
    optimizer, decayed, not_decayed = build_optimizer(
        model, config.learning_rate, config.weight_decay, (config.adam_beta1, config.adam_beta2),
        config.adam_epsilon, grad_clip)
    logger.info("AdamW: %d tensors with weight decay %g, %d without (%s)", len(decayed), config.weight_decay,
                len(not_decayed), ", ".join(not_decayed[:4]) + (" ..." if len(not_decayed) > 4 else ""))
    if resume_path is not None:
        load_optimizer_state(resume_path, model, optimizer)
    params = [p for p in model.parameters() if not p.stop_gradient]
    runner = _Loss(model)
    if config.sharding:
        from paddle.distributed.sharding import group_sharded_parallel

        runner, optimizer, _ = group_sharded_parallel(runner, optimizer, level=SHARDING_LEVELS[config.sharding])
    elif world > 1:
        runner = paddle.DataParallel(runner)

    # ---- the loop
    logger.info("training: %d samples, %d steps (%d per epoch), global batch %d = %d x %d accumulation x %d "
                "process(es)", n, total_steps, steps_per_epoch, global_batch, b, accumulation, world)
    bar = tqdm(total=total_steps, initial=start_step, disable=config.disable_tqdm or rank != 0, desc="train")
    for step in range(start_step, total_steps):
        t0 = time.time()
        lr = learning_rate_at(step, config.learning_rate, total_steps, config.lr_scheduler_type,
                              config.warmup_steps, config.min_learning_rate)
        optimizer.set_lr(lr)
        batches = micro_batches(config, step, steps_per_epoch, n, world)
        losses, tokens = [], 0
        for a in range(accumulation):
            j = rank * accumulation + a
            seed_micro_batch(config.seed, step, j)
            batch = collate([dataset[i] for i in batches[j]])
            tokens += int(batch["attention_mask"].sum())
            sync = a == accumulation - 1 or world == 1 or config.sharding
            with contextlib.nullcontext() if sync else runner.no_sync():
                # --bf16: matmuls in bf16 (autocast O1), the float32 parameters are the master weights; norms,
                # softmax and the loss stay float32
                with paddle.amp.auto_cast(enable=config.bf16, dtype="bfloat16", level="O1"):
                    loss = runner(*(paddle.to_tensor(batch[k]) for k in ("input_ids", "attention_mask", "labels")))
                (loss / accumulation).backward()
            losses.append(float(loss))
        if config.max_grad_norm > 0 and grad_clip is None:
            grad_norm = float(clip_grad_norm_(params, config.max_grad_norm))
        else:
            grad_norm = float("nan")
        optimizer.step()
        optimizer.clear_grad(set_to_zero=False)  # release the gradients until the next backward, as torch's zero_grad
        stats = paddle.to_tensor([sum(losses), float(tokens)], dtype="float64")
        if world > 1:
            dist.all_reduce(stats)
        record = {"step": step + 1, "loss": float(stats[0]) / (accumulation * world), "learning_rate": lr,
                  "grad_norm": grad_norm, "tokens_per_second": float(stats[1]) / (time.time() - t0),
                  "epoch": (step + 1) / steps_per_epoch}
        history.append(record)
        bar.update(1)
        if rank == 0 and ((step + 1) % config.logging_steps == 0 or step + 1 == total_steps):
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.3g}")
            logger.info("step %d/%d: loss %.6f, lr %.6g, grad_norm %.6g, %.0f tokens/s", step + 1, total_steps,
                        record["loss"], lr, grad_norm, record["tokens_per_second"])
        if save_steps and (step + 1) % save_steps == 0 and step + 1 < total_steps:
            if rank == 0:
                epoch, position = divmod(step + 1, steps_per_epoch)
                state = {"step": step + 1, "epoch": epoch, "data_position": position * global_batch,
                         "rng": "paddle and python generators seeded from (seed, step, micro-batch)",
                         "config": arithmetic, "log_history": history}
                save_checkpoint(config.output_dir, step + 1, model, optimizer, state, config.save_total_limit)
            if world > 1:
                dist.barrier()
    bar.close()
    if config.sharding == "stage3":
        runner.get_all_parameters()  # gather the sharded parameters before saving
    if rank == 0:
        model.save_pretrained(config.output_dir)
        with open(os.path.join(config.output_dir, "trainer_state.json"), "w", encoding="utf-8") as f:
            json.dump({"step": total_steps, "config": arithmetic, "log_history": history}, f, indent=2)
        logger.info("saved the fine-tuned model to %s", config.output_dir)
    if world > 1:
        dist.barrier()
    return history
