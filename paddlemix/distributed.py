"""The launched environment of ``python -m paddle.distributed.launch`` and the few collectives the package needs.

One code path for any world size (gpt-fast's ``maybe_init_dist``, PaddleNLP's ``init_dist_env``): outside a launch
every helper answers as rank 0 of 1 and calls no collective. The launcher sets ``PADDLE_TRAINER_ID`` /
``PADDLE_TRAINERS_NUM`` (global rank and world size) and ``PADDLE_LOCAL_RANK`` / ``PADDLE_LOCAL_SIZE`` (this
host's processes). ``init`` starts the process group (gloo on CPU, NCCL on GPU) unless the caller already did.
"""

import logging
import os

import numpy as np

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
    """Logs come from rank 0 only: other ranks keep errors."""
    if not is_main():
        logging.getLogger().setLevel(logging.ERROR)
        logging.getLogger("paddlemix").setLevel(logging.ERROR)


# ---------------------------------------------------------------- the example scripts' plumbing
PARALLEL_HELP = (
    "how launched processes share the work (python -m paddle.distributed.launch --nproc_per_node N ...): "
    "'tensor' splits the language model over them (default with several processes), 'data' gives each its share "
    "of the prompts or images; ignored in a single process"
)


class Launch:
    """How a script's work is shared out: ``mode`` "tensor", "data" or None (one process).

    ``tensor_parallel_degree``: what to pass to ``from_pretrained``. ``mine(count)``: the items this rank generates
    (data: its contiguous share; otherwise all). ``split(indices)``: the part of them this rank post-processes
    (decodes and writes; under tensor parallelism every rank holds every result, so the ranks share that work).
    ``gather(items)``: every rank's list, concatenated in rank order, on rank 0 (other ranks get [])."""

    def __init__(self, parallel=None):
        if parallel not in (None, "tensor", "data"):
            raise ValueError(f"--parallel must be 'tensor' or 'data', got {parallel!r}")
        self.rank, self.size = world()
        self.mode = None if self.size == 1 else parallel or "tensor"
        if self.mode is not None:
            init()
            quiet_other_ranks()
            logger.info("%d processes, %s parallel", self.size, self.mode)

    @property
    def tensor_parallel_degree(self):
        return self.size if self.mode == "tensor" else 1

    def mine(self, count, what="prompts"):
        if self.mode != "data":
            return range(count)
        if count < self.size and self.rank == 0:
            logger.warning("%d %s over %d data-parallel processes: ranks %d..%d have nothing to do and stay idle",
                           count, what, self.size, count, self.size - 1)
        return share(count, self.rank, self.size)

    def split(self, indices):
        indices = list(indices)
        if self.mode != "tensor":
            return indices
        return [indices[i] for i in share(len(indices), self.rank, self.size)]

    def gather(self, items):
        if self.mode is None:
            return list(items)
        gathered = all_gather_object(list(items))
        return [x for part in gathered for x in part] if self.rank == 0 else []


def request_seed(seed, index):
    """The sampling seed of request ``index`` in a run seeded with ``seed`` (an int from numpy's SeedSequence of
    both): each prompt gets its own stream, the same whichever batch or process it runs in."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def read_prompts_file(path):
    """Prompts of a ``--prompts_file``: one per line, UTF-8; a line may end with a tab and an aspect ratio "W:H"
    (``a red fox<TAB>16:9``); blank lines are skipped. Returns [(prompt, ratio or None)]."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--prompts_file {path} is not a file")
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            prompt, _, ratio = line.partition("\t")
            ratio = ratio.strip() or None
            if not prompt.strip():
                raise ValueError(f"{path} line {number}: empty prompt before the tab")
            if ratio is not None and (ratio.count(":") != 1 or not all(p.strip().isdigit() and int(p) > 0
                                                                       for p in ratio.split(":"))):
                raise ValueError(f"{path} line {number}: ratio {ratio!r} is not W:H with positive integers")
            entries.append((prompt, ratio))
    if not entries:
        raise ValueError(f"--prompts_file {path} holds no prompts")
    return entries
