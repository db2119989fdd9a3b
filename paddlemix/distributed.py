"""The launched environment of ``python -m paddle.distributed.launch`` and the few collectives the package needs.

One code path for any world size (gpt-fast's ``maybe_init_dist``, PaddleNLP's ``init_dist_env``): outside a launch
every helper answers as rank 0 of 1 and calls no collective. The launcher sets ``PADDLE_TRAINER_ID`` /
``PADDLE_TRAINERS_NUM`` (global rank and world size) and ``PADDLE_LOCAL_RANK`` / ``PADDLE_LOCAL_SIZE`` (this
host's processes). ``init`` starts the process group (gloo on CPU, NCCL on GPU) unless the caller already did.
"""

import logging
import os

logger = logging.getLogger(__name__)


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def world():
    """(rank, world size) of this process: (0, 1) unless launched with several processes."""
    return _env_int("PADDLE_TRAINER_ID", 0), _env_int("PADDLE_TRAINERS_NUM", 1)


def local_world():
    """(local rank, processes on this host)."""
    rank, size = world()
    return _env_int("PADDLE_LOCAL_RANK", rank), _env_int("PADDLE_LOCAL_SIZE", size)


def is_main():
    """Whether this process is the one that logs, shows progress and writes outputs (rank 0)."""
    return world()[0] == 0


def init():
    """Start the default process group when launched with several processes and nobody started it yet."""
    import paddle.distributed as dist

    if world()[1] > 1 and not dist.is_initialized():
        dist.init_parallel_env()


def all_gather_object(obj):
    """The objects of every rank, in rank order ([obj] for a single process)."""
    if world()[1] == 1:
        return [obj]
    import paddle.distributed as dist

    init()
    objects = []
    dist.all_gather_object(objects, obj)
    return objects


def check_same(value, what):
    """Raise ValueError on every rank when the ranks hold different values of ``what`` (e.g. the model path)."""
    values = all_gather_object(value)
    if any(v != values[0] for v in values):
        shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
        raise ValueError(f"the launched ranks disagree on {what} ({shown}); every rank must be given the same")


def share(count, rank, size):
    """The contiguous range of ``count`` items that rank ``rank`` of ``size`` takes (the first ranks take one more
    when ``size`` does not divide ``count``; ranks beyond ``count`` take none)."""
    base, extra = divmod(count, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def cpu_share():
    """This process's share of the CPUs it may run on: all of them divided by the processes on this host."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // local_world()[1])


def quiet_other_ranks():
    """Logs come from rank 0 only: other ranks keep warnings and errors."""
    if not is_main():
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("paddlemix").setLevel(logging.WARNING)
