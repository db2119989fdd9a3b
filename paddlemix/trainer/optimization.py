"""Optimizer pieces of fine-tuning, with the reference run's arithmetic (transformers 4.44 Trainer + torch AdamW):
the weight-decay groups, the learning-rate schedules as pure functions of the step, and clipping by global norm."""

import math

import paddle
from paddle import nn

from ..models.emu3.modeling_emu3 import Emu3RMSNorm

SCHEDULES = ("cosine_with_min_lr", "cosine", "constant", "constant_with_warmup", "linear")
_NORM_LAYERS = (Emu3RMSNorm, nn.LayerNorm)


def decay_parameter_names(model):
    """Structured names of the parameters that get weight decay: every parameter except those of norm layers
    (RMSNorm / LayerNorm weights) and biases, as transformers' ``Trainer.get_decay_parameter_names``."""
    no_decay = set()
    for prefix, layer in model.named_sublayers(include_self=True):
        if isinstance(layer, _NORM_LAYERS):
            no_decay.update(f"{prefix}.{name}" if prefix else name for name, _ in layer.named_parameters())
    return [name for name, _ in model.named_parameters() if name not in no_decay and "bias" not in name]


def build_optimizer(model, learning_rate, weight_decay, betas, eps, grad_clip=None):
    """``paddle.optimizer.AdamW`` over the model's parameters, decaying exactly ``decay_parameter_names(model)``.

    Paddle decides decay per ``Tensor.name`` (the framework name), so the structured names are mapped to it first.
    Returns (optimizer, decayed structured names, not decayed structured names)."""
    decay = set(decay_parameter_names(model))
    params = dict(model.named_parameters())
    decay_tensor_names = {params[name].name for name in decay}
    optimizer = paddle.optimizer.AdamW(
        learning_rate=learning_rate,
        parameters=list(params.values()),
        beta1=betas[0],
        beta2=betas[1],
        epsilon=eps,
        weight_decay=weight_decay,
        apply_decay_param_fun=lambda tensor_name: tensor_name in decay_tensor_names,
        grad_clip=grad_clip,
    )
    return optimizer, sorted(decay), sorted(set(params) - decay)


def lr_factor(step, total_steps, schedule, warmup_steps=0, min_lr_rate=0.0):
    """The learning-rate multiplier of optimizer step ``step`` (0 = the first step), as transformers' schedules
    (``get_scheduler``; ``constant`` ignores the warmup, as there). The learning rate is ``base * factor``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_scheduler_type must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return 1.0
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    if schedule == "constant_with_warmup":
        return 1.0
    if schedule == "linear":
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    factor = 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))
    if schedule == "cosine_with_min_lr":
        factor = factor * (1 - min_lr_rate) + min_lr_rate
    return max(0.0, factor)


def learning_rate_at(step, base_lr, total_steps, schedule, warmup_steps=0, min_lr=None):
    """``base_lr * lr_factor(...)``; ``min_lr`` (cosine_with_min_lr) becomes the rate ``min_lr / base_lr``."""
    if schedule == "cosine_with_min_lr" and min_lr is None:
        raise ValueError("lr_scheduler_type cosine_with_min_lr needs --min_learning_rate")
    rate = min_lr / base_lr if schedule == "cosine_with_min_lr" else 0.0
    return base_lr * lr_factor(step, total_steps, schedule, warmup_steps, rate)


@paddle.no_grad()
def clip_grad_norm_(parameters, max_norm):
    """Scale the gradients in place as ``torch.nn.utils.clip_grad_norm_``: total = L2 norm of the per-tensor L2
    norms, coef = max_norm / (total + 1e-6) clamped at 1. (Paddle's ``ClipGradByGlobalNorm`` uses
    max_norm / max(total, max_norm), a different coefficient.) Returns the total before clipping (float32 tensor)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return paddle.zeros([], "float32")
    # sqrt of summed squares: Paddle 3.3's CPU linalg.norm is off by up to 6e-6 relative here
    norms = paddle.stack([paddle.square(g.astype("float32")).sum().sqrt() for g in grads])
    total = paddle.square(norms).sum().sqrt()
    coef = paddle.clip(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.multiply_(coef.astype(g.dtype))
    return total
