"""CPU settings that Paddle's bundled libraries need to run at full speed (both applied once, at import).

MKL on AMD processors:

Paddle's CPU wheel does its matrix products (Linear, matmul, and the im2col GEMM of Conv2D) in an MKL build that,
on AMD processors, takes its generic code path instead of AVX2: measured on an AMD EPYC with one thread, a
[128, 1152] x [1152, 16384] product took 256 ms against 76 ms with ``MKL_DEBUG_CPU_TYPE=5`` (numpy's OpenBLAS: 65 ms),
and a 128->128 3x3 convolution on 128x128 went from 273 ms to 178 ms. MKL reads the variable when it first runs,
so setting it at import time (before any computation) is enough. It is set only on AMD processors (on Intel ones it
would hold MKL back to AVX2) and never overrides a value the user set.

glibc's malloc keeps freed memory: Paddle's CPU allocator takes every tensor from malloc and frees it right after
use, and glibc serves allocations above its mmap threshold (128 KB, growing to at most 32 MB) with fresh ``mmap``
pages that are zero-filled on first touch and unmapped on free, so every large intermediate of a forward pays its
page faults again. Measured on a 2-core AMD EPYC: copying a 33 MB tensor took 21.7 ms, a 4 MB one 2.5 ms; with the
thresholds below 3.5 ms and 0.14 ms (the pages are reused from the heap). ``keep_freed_memory`` raises the mmap and
trim thresholds to 1 GiB with ``mallopt``; the cost is that up to 1 GiB of freed memory stays in the process for
reuse. It does nothing when the user tunes malloc (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
``GLIBC_TUNABLES``), when ``PADDLEMIX_MALLOC_TUNING=0``, or on a C library other than glibc. While a checkpoint
loads, ``returning_freed_memory`` puts the default-like behaviour back (its staging buffers are freed at once, and
kept they would raise the loading peak).
"""

import contextlib
import ctypes
import logging
import os
import platform

from .distributed import cpu_share

logger = logging.getLogger(__name__)


def _cpu_vendor():
    try:
        with open("/proc/cpuinfo", "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def tune_mkl_for_amd():
    """Set MKL_DEBUG_CPU_TYPE=5 on AMD processors unless the user set it. Returns whether it was set here."""
    if "MKL_DEBUG_CPU_TYPE" in os.environ or _cpu_vendor() != "AuthenticAMD":
        return False
    os.environ["MKL_DEBUG_CPU_TYPE"] = "5"
    logger.debug("AMD processor: MKL_DEBUG_CPU_TYPE=5 so that Paddle's MKL uses its AVX2 kernels")
    return True


MALLOC_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def keep_freed_memory(libc=None):
    """Raise glibc's mmap and trim thresholds to MALLOC_THRESHOLD (see the module docstring). Returns whether it
    did. libc: the C library to call (default: this process's glibc)."""
    if os.environ.get("PADDLEMIX_MALLOC_TUNING", "1") == "0":
        return False
    if any(v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = libc if libc is not None else _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    done = libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_THRESHOLD) == 1
    done = libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_THRESHOLD) == 1 and done
    if done:
        global _TUNED_LIBC
        _TUNED_LIBC = libc
        logger.debug("glibc malloc: mmap and trim thresholds raised to %d bytes", MALLOC_THRESHOLD)
    return done


_TUNED_LIBC = None
RETURNING_THRESHOLD = 128 * 1024  # glibc's default mmap and trim thresholds


@contextlib.contextmanager
def returning_freed_memory():
    """Within the block, freed memory above 128 KB goes back to the system at once (glibc's default thresholds),
    when keep_freed_memory raised them; they are raised again afterwards."""
    libc = _TUNED_LIBC
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, RETURNING_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, RETURNING_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_THRESHOLD)


def set_cpu_threads(threads=None):
    """Threads for Paddle's CPU kernels (its OpenMP and MKL) and the paddlemix ops, which share Paddle's OpenMP
    runtime. Paddle starts with one; the example scripts call this with ``--threads`` (default: every CPU this process
    may run on, divided by the processes launched on this host). Returns the number set."""
    if threads is None:
        threads = cpu_share()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    import paddle

    paddle.base.core.set_num_threads(threads)
    logger.info("CPU threads: %d", threads)
    return threads
