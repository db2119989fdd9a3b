"""Tensor parallelism for inference over ``paddle.distributed``'s plain collectives (gloo on CPU, NCCL on GPU).

A model opts in with a plan written as data: ``config.base_model_tp_plan`` (sublayer patterns of the base model,
``*`` standing for a layer index) and the model class's ``_tp_plan`` (its own head), each mapping to a style:

* ``"colwise"``: a Linear split by output features (Paddle weight axis 1, checkpoint axis 0): q/k/v, gate/up;
* ``"rowwise"``: a Linear split by input features (Paddle axis 0, checkpoint axis 1), whose partial outputs are
  summed by one ``all_reduce`` in a forward post-hook: o/down;
* ``"vocab"``: an Embedding or a Linear head split by vocabulary rows (checkpoint axis 0). The embedding looks up the
  ids in its own rows (zeros elsewhere) and all-reduces; the head computes its columns and all-gathers them, so its
  output is the full logits on every rank (generation asks for the last position only: one gather per step).

``apply_tensor_parallel`` (gpt-fast's ``apply_tp``) runs on the lazily created model, before any weight is read: it
swaps each planned parameter for one of the rank's shape, divides the attention head counts, and records per
parameter which checkpoint slice (axis, start, stop) this rank reads; the loader then reads only those slices
(``model_utils._read_tensor``). A size that the degree does not divide is split unevenly (``shares``): the first
ranks take one more row. Only the head counts must divide (a head is never split). Inference only: the hooks
all-reduce in place, without a backward rule.
"""

import re

import paddle
import paddle.distributed as dist
import paddle.nn.functional as F
from paddle import nn

from .. import distributed, ops

STYLES = ("colwise", "rowwise", "vocab")


def shares(size, degree):
    """How many of ``size`` rows each rank holds: equal, or the first ``size % degree`` ranks one more."""
    base, extra = divmod(size, degree)
    return [base + (r < extra) for r in range(degree)]


def bounds(size, degree, rank):
    """(start, stop) of rank's rows of ``size``."""
    sizes = shares(size, degree)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def resolve(degree=None, rank=None):
    """(degree, rank): the arguments, or the launched world (PADDLE_TRAINERS_NUM / PADDLE_TRAINER_ID) where left out.

    Raises ValueError unless 1 <= degree and 0 <= rank < degree, and, for degree > 1, unless the degree is the
    launched world size and the rank this process's (one tensor-parallel group spans the launch)."""
    env_rank, env_size = distributed.world()
    degree = env_size if degree is None else degree
    rank = (env_rank if degree > 1 else 0) if rank is None else rank
    for name, value in (("tensor_parallel_degree", degree), ("tensor_parallel_rank", rank)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if degree < 1 or not 0 <= rank < degree:
        raise ValueError(f"tensor_parallel_rank must be in [0, {degree}) and tensor_parallel_degree >= 1, "
                         f"got rank {rank} of degree {degree}")
    if degree > 1 and (degree != env_size or rank != env_rank):
        raise ValueError(
            f"tensor_parallel_degree={degree}, tensor_parallel_rank={rank} needs a launch of {degree} processes "
            f"(python -m paddle.distributed.launch --nproc_per_node {degree} ...) with this process as rank {rank}; "
            f"this process is rank {env_rank} of {env_size}"
        )
    return degree, rank


def check_degree(config, degree):
    """ValueError unless ``degree`` divides the attention heads and the KV heads (a head is never split)."""
    for name in ("num_attention_heads", "num_key_value_heads"):
        count = getattr(config, name)
        if count % degree:
            raise ValueError(
                f"tensor_parallel_degree {degree} does not divide {name} {count}: each rank holds whole heads "
                f"(use a degree that divides {config.num_key_value_heads} KV heads and "
                f"{config.num_attention_heads} attention heads)"
            )


def _pattern(key):
    return re.compile("^" + re.escape(key).replace(r"\*", r"[0-9]+") + "$")


def model_plan(model):
    """The model's full plan: {sublayer name pattern: style}."""
    prefix = model.base_model_prefix
    plan = {f"{prefix}.{k}": v for k, v in model.config.base_model_tp_plan.items()}
    plan.update(model._tp_plan)
    for key, style in plan.items():
        if style not in STYLES:
            raise ValueError(f"tensor-parallel plan entry {key!r}: unknown style {style!r} (use one of {STYLES})")
    return plan


def _all_reduce_hook(layer, inputs, output):
    dist.all_reduce(output)
    return output


def all_gather_columns(local, widths):
    """The last axis of every rank's ``local`` (rank r's holding ``widths[r]`` columns) concatenated in rank order.

    all_gather moves equal shapes, so each piece is zero-padded to the widest one and the padding cut off."""
    most = max(widths)
    pad = most - local.shape[-1]
    if pad:
        local = paddle.concat([local, paddle.zeros(local.shape[:-1] + [pad], local.dtype)], axis=-1)
    pieces = []
    dist.all_gather(pieces, local)
    return paddle.concat([p[..., :w] for p, w in zip(pieces, widths) if w], axis=-1)


class VocabParallelEmbedding(nn.Layer):
    """The rows ``start .. stop-1`` of an embedding table; ids outside them give zeros, and one all_reduce sums the
    ranks' lookups (every id is in exactly one rank's rows, so the sum is exact)."""

    def __init__(self, start, stop, embedding_dim):
        super().__init__()
        self.start, self.stop = start, stop
        self.weight = self.create_parameter([stop - start, embedding_dim])

    def forward(self, ids):
        if self.training:
            raise ValueError(
                "a tensor-parallel model runs inference only (its all-reduces have no backward rule): load the model "
                "with tensor_parallel_degree=1 to train it (data parallel under paddle.distributed.launch)"
            )
        local = ids - self.start
        inside = (local >= 0) & (local < self.stop - self.start)
        out = F.embedding(paddle.where(inside, local, paddle.zeros_like(local)), self.weight)
        out = out * inside.unsqueeze(-1).astype(out.dtype)
        dist.all_reduce(out)
        return out


class VocabParallelHead(nn.Linear):
    """The output columns ``start .. stop-1`` of a vocabulary head (an ``nn.Linear`` [in, stop-start], so the loader
    transposes it as any Linear); ``forward`` returns the full logits on every rank, gathered once."""

    def __init__(self, in_features, start, stop, vocab_size, degree):
        super().__init__(in_features, stop - start, bias_attr=False)
        self.start, self.stop, self.vocab_size = start, stop, vocab_size
        self.bounds = [bounds(vocab_size, degree, r) for r in range(degree)]

    def forward(self, x):
        return all_gather_columns(ops.linear(x, self.weight), [b - a for a, b in self.bounds])

    def column_slice(self, start):
        """A function x -> the logits of columns start.. (each rank its overlap with them, then one gather)."""
        widths = [max(0, b - max(a, start)) for a, b in self.bounds]
        local = max(0, start - self.start)
        weight = self.weight[:, local:].contiguous() if self.stop > start else None

        def head(x):
            if weight is None:
                part = paddle.zeros(x.shape[:-1] + [0], x.dtype)
            else:
                part = ops.linear(x, weight)
            return all_gather_columns(part, widths)

        return head


def apply_tensor_parallel(model, degree, rank):
    """Split the planned sublayers of a lazily created model for ``rank`` of ``degree`` (call under
    ``paddle.LazyGuard``, before loading). Returns {parameter name: (checkpoint axis, start, stop, full size)}, the
    slices the loader reads."""
    check_degree(model.config, degree)
    plan = [(_pattern(k), style) for k, style in model_plan(model).items()]
    slices = {}
    layers = dict(model.named_sublayers(include_self=True))
    for name, layer in list(layers.items()):
        style = next((s for p, s in plan if p.match(name)), None)
        if style is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = layers[parent_name]
        in_f, out_f = layer.weight.shape if isinstance(layer, nn.Linear) else (None, None)
        if style == "colwise":
            start, stop = bounds(out_f, degree, rank)
            layer.weight = layer.create_parameter([in_f, stop - start])
            slices[f"{name}.weight"] = (0, start, stop, out_f)
        elif style == "rowwise":
            start, stop = bounds(in_f, degree, rank)
            layer.weight = layer.create_parameter([stop - start, out_f])
            layer.register_forward_post_hook(_all_reduce_hook)
            slices[f"{name}.weight"] = (1, start, stop, in_f)
        elif isinstance(layer, nn.Embedding):
            vocab, dim = layer.weight.shape
            start, stop = bounds(vocab, degree, rank)
            setattr(parent, attr, VocabParallelEmbedding(start, stop, dim))
            slices[f"{name}.weight"] = (0, start, stop, vocab)
        elif isinstance(layer, nn.Linear):
            start, stop = bounds(out_f, degree, rank)
            setattr(parent, attr, VocabParallelHead(in_f, start, stop, out_f, degree))
            slices[f"{name}.weight"] = (0, start, stop, out_f)
        else:
            raise ValueError(f"tensor-parallel plan: {name} is a {type(layer).__name__}; 'vocab' splits an "
                             "Embedding or a Linear head")
    for layer in model.sublayers():  # attention layers hold their rank's heads
        if hasattr(layer, "num_heads") and hasattr(layer, "num_kv_heads"):
            layer.num_heads //= degree
            layer.num_kv_heads //= degree
    model.config.tensor_parallel_degree = degree
    model.config.tensor_parallel_rank = rank
    return slices
