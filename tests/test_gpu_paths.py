"""What the CPU can show of the GPU paths (issue 9, item 1; the rest is checked on a GPU, see benchmarks/RESULTS.md):

* the VQ model's repeat_interleave replacement (Paddle 3.3 has no float16 repeat_interleave kernel) against np.repeat;
* float16 additive masks are float32 and are added to float32 scores: a fully masked row gives no NaN;
* the attention switch falls back to the matmul attention wherever Paddle 3.3's flash_attention would fail or drop
  the causal mask (device, capability and flags simulated);
* external_ops/setup.py finds nvcc where Paddle's build does and always embeds PTX.
"""

import importlib.util
import logging

import numpy as np
import paddle
import pytest

from conftest import REPO_ROOT
from op_reference import F32, np_masked_softmax
from paddlemix.models.emu3 import modeling_emu3
from paddlemix.models.emu3.modeling_emu3 import additive_mask, attention_backend
from paddlemix.models.emu3.modeling_emu3visionvq import repeat_interleave
from paddlemix.ops import fallback


# ----------------------------------------------------------------------------------------------- repeat_interleave
@pytest.mark.parametrize("axis, repeats", [(0, 2), (2, 2), (2, 4), (-1, 3), (1, 1)])
def test_repeat_interleave_matches_np_repeat(axis, repeats):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(F32)
    got = repeat_interleave(paddle.to_tensor(x), repeats, axis)
    np.testing.assert_array_equal(got.numpy(), np.repeat(x, repeats, axis=axis))
    np.testing.assert_array_equal(got.numpy(), paddle.repeat_interleave(paddle.to_tensor(x), repeats, axis).numpy())


def test_repeat_interleave_runs_in_float16():
    x = np.random.default_rng(1).standard_normal((1, 4, 3, 2, 2)).astype(np.float16)
    got = repeat_interleave(paddle.to_tensor(x), 4, 2)  # the encoder's time_repeat on a float16 latent
    assert got.dtype == paddle.float16
    np.testing.assert_array_equal(got.numpy(), np.repeat(x, 4, axis=2))


# ----------------------------------------------------------------------------------------------- masks
def test_additive_mask_is_float32_for_float16():
    """(bfloat16 masks stay bfloat16, which has float32's range; the CPU build has no bfloat16 `where` to show it.)"""
    key_mask = paddle.to_tensor([[0, 1, 1]])
    for dtype, want in ((paddle.float16, paddle.float32), (paddle.float32, paddle.float32)):
        mask = additive_mask(key_mask, 3, 0, dtype)
        assert mask.dtype == want
        low = float(paddle.finfo(want).min)
        expected = np.array([[low, low, low], [low, 0, low], [low, 0, 0]], np.float64)  # slot 0 is padding
        np.testing.assert_array_equal(mask.astype("float32").numpy()[0, 0], expected.astype(F32))


def _fully_masked_case(seed=0):
    """float16 scores [2, 4, 3, 5] (4 heads, 3 queries), a left-padded row whose first query sees no key."""
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal((2, 4, 3, 5)) * 40).astype(np.float16)  # far below -16: -65504 + s overflows
    key_mask = paddle.to_tensor([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    return scores, additive_mask(key_mask, 3, 2, paddle.float16)


def test_float16_scores_are_masked_in_float32_without_nan():
    scores, mask = _fully_masked_case()
    got = fallback.masked_softmax_(paddle.to_tensor(scores), mask, 0.125)
    assert got.dtype == paddle.float32
    got = got.numpy()
    assert np.isfinite(got).all()
    scaled = (scores * np.float16(0.125)).astype(F32)  # scaled in float16 (exact: a power of two), then float32
    np.testing.assert_allclose(got, np_masked_softmax(scaled, mask.numpy(), 1.0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[1, :, 0], np.full((4, 5), 0.2, F32), rtol=1e-6)  # no visible key: uniform


def test_grouped_attention_float32_path_unchanged():
    """float32 scores take the same ops as before (scale, add, softmax in place): same numbers as numpy."""
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((2, 4, 3, 5)).astype(F32)
    mask = additive_mask(paddle.to_tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]), 3, 2, paddle.float32)
    got = fallback.masked_softmax_(paddle.to_tensor(scores), mask, 0.125)
    np.testing.assert_allclose(got.numpy(), np_masked_softmax(scores, mask.numpy(), 0.125), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- flash attention
@pytest.fixture
def fake_gpu(monkeypatch):
    """A GPU of compute capability 9.0 with flash attention 2 built in: a dict of the capability and the Paddle flags
    that attention_backend reads, which a test may change."""
    env = {"capability": (9, 0), "FLAGS_flash_attn_available": True, "FLAGS_flash_attn_version": 2,
           "FLAGS_cudnn_deterministic": False}
    monkeypatch.setattr(modeling_emu3, "on_gpu", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda *a: env["capability"])
    monkeypatch.setattr(modeling_emu3, "_paddle_flag", lambda name, default: env.get(name, default))
    monkeypatch.setattr(modeling_emu3, "_LOGGED_BACKENDS", set())
    return env


def test_flash_attention_on_a_capable_gpu(fake_gpu):
    assert attention_backend(paddle.bfloat16, False, 128) == "flash"
    assert attention_backend(paddle.float16, False, 256) == "flash"
    assert attention_backend(paddle.bfloat16, True, 128) == "math"  # a mask or an earlier cache
    assert attention_backend(paddle.float32, False, 128) == "math"


@pytest.mark.parametrize("change, reason", [
    ({"FLAGS_flash_attn_version": 3}, "FLAGS_flash_attn_version=3"),
    ({"FLAGS_flash_attn_available": False}, "no flash attention"),
    ({"capability": (7, 5)}, "compute capability 8.0"),
])
def test_flash_attention_falls_back_with_one_log_line(fake_gpu, caplog, change, reason):
    fake_gpu.update(change)
    with caplog.at_level(logging.INFO, logger=modeling_emu3.__name__):
        for _ in range(3):
            assert attention_backend(paddle.bfloat16, False, 128) == "math"
    lines = [r.getMessage() for r in caplog.records if r.name == modeling_emu3.__name__]
    assert len(lines) == 1 and reason in lines[0]


def test_head_dim_over_256_takes_the_math_path(fake_gpu, caplog):
    with caplog.at_level(logging.INFO, logger=modeling_emu3.__name__):
        assert attention_backend(paddle.bfloat16, False, 320) == "math"
    assert "head_dim 320 > 256" in caplog.text


def test_flash_attention_version_3_with_deterministic_cudnn_runs_version_2(fake_gpu):
    fake_gpu.update({"FLAGS_flash_attn_version": 3, "FLAGS_cudnn_deterministic": True})
    assert attention_backend(paddle.bfloat16, False, 128) == "flash"


def test_flags_read_on_this_build():
    """The flag reader answers on a build that lacks the GPU flags (this CPU build) instead of raising."""
    assert modeling_emu3._paddle_flag("FLAGS_flash_attn_version", 2) in (2, 3)
    assert modeling_emu3._paddle_flag("FLAGS_no_such_flag_here", "absent") == "absent"


# ----------------------------------------------------------------------------------------------- external_ops/setup.py
@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("pmx_setup", REPO_ROOT / "external_ops" / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the helpers; setup() runs only as __main__
    return module


def _fake_nvcc(folder):
    path = folder / "bin" / "nvcc"
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_find_nvcc_as_paddle_finds_cuda(setup_py, tmp_path, monkeypatch):
    env_home, path_home, default_home = tmp_path / "env", tmp_path / "onpath", tmp_path / "default"
    env_nvcc, path_nvcc, default_nvcc = _fake_nvcc(env_home), _fake_nvcc(path_home), _fake_nvcc(default_home)
    monkeypatch.setattr(setup_py, "DEFAULT_CUDA_HOME", str(default_home))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("CUDA_HOME", str(env_home))
    monkeypatch.setenv("PATH", str(path_home / "bin"))
    assert setup_py.find_nvcc() == env_nvcc  # $CUDA_HOME first
    monkeypatch.delenv("CUDA_HOME")
    assert setup_py.find_nvcc() == path_nvcc  # then the nvcc on PATH
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert setup_py.find_nvcc() == default_nvcc  # then /usr/local/cuda: not on PATH, still found
    monkeypatch.setenv("CUDA_PATH", str(tmp_path / "missing"))
    assert setup_py.find_nvcc() is None  # a $CUDA_PATH without nvcc: CPU kernels only, as Paddle's build would fail


def test_cuda_arch_flags_embed_ptx_of_the_newest(setup_py):
    assert setup_py.cuda_arch_flags(["90", "80"]) == [
        "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
        "-gencode", "arch=compute_90,code=compute_90",
    ]
    assert setup_py.cuda_arch_flags(["120", "86"])[-1] == "arch=compute_120,code=compute_120"
