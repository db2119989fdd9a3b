"""CPU settings that Paddle's bundled libraries need to run at full speed.

Paddle's CPU wheel does its matrix products (Linear, matmul, and the im2col GEMM of Conv2D) in an MKL build that,
on AMD processors, takes its generic code path instead of AVX2: measured on an AMD EPYC with one thread, a
[128, 1152] x [1152, 16384] product took 256 ms against 76 ms with ``MKL_DEBUG_CPU_TYPE=5`` (numpy's OpenBLAS: 65 ms),
and a 128->128 3x3 convolution on 128x128 went from 273 ms to 178 ms. MKL reads the variable when it first runs,
so setting it at import time (before any computation) is enough. It is set only on AMD processors (on Intel ones it
would hold MKL back to AVX2) and never overrides a value the user set.
"""

import logging
import os

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
