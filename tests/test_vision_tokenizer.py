"""Emu3 VQ vision tokenizer against the reference outputs of the original PyTorch code (fixtures refs/vq_*.npz)."""

import glob
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from paddlemix.models.emu3 import Emu3VisionVQConfig, Emu3VisionVQImageProcessor, Emu3VisionVQModel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vq_dir(fixtures_dir):
    return os.path.join(str(fixtures_dir), "vision_tokenizer")


@pytest.fixture(scope="module")
def model(vq_dir):
    return Emu3VisionVQModel.from_pretrained(vq_dir)


@pytest.fixture(scope="module")
def processor(vq_dir):
    return Emu3VisionVQImageProcessor.from_pretrained(vq_dir)


def image_cases(fixtures_dir):
    paths = sorted(glob.glob(os.path.join(str(fixtures_dir), "refs", "vq_img_*.npz")))
    assert paths, f"no refs/vq_img_*.npz in {fixtures_dir}"
    cases = []
    for path in paths:
        name = re.match(r"vq_(.+)\.npz$", os.path.basename(path)).group(1)
        cases.append((name, os.path.join(str(fixtures_dir), "inputs", name + ".png"), dict(np.load(path))))
    return cases


def video_frames(fixtures_dir):
    frames = sorted(glob.glob(os.path.join(str(fixtures_dir), "inputs", "video_frame_*.png")))
    assert frames, "no inputs/video_frame_*.png"
    return frames


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_images_match_reference(fixtures_dir, model, processor):
    for name, path, ref in image_cases(fixtures_dir):
        with Image.open(path) as im:
            assert list(ref["input_size_hw"]) == [im.height, im.width], name
            assert str(ref["input_mode"]) == im.mode, name
            pixel_values = processor(im, return_tensors="pd")["pixel_values"]
        assert list(pixel_values.shape[-2:]) == list(ref["resized_hw"]), name
        assert max_diff(pixel_values.numpy(), ref["pixel_values"]) <= 1e-6, name

        latent = model.encode_to_latent(pixel_values)
        assert list(latent.shape) == list(ref["prequant_latent"].shape), name
        assert max_diff(latent.numpy(), ref["prequant_latent"]) <= 1e-4, name

        codes = model.encode(pixel_values)
        assert codes.dtype == paddle.int64
        np.testing.assert_array_equal(codes.numpy(), ref["codes"], err_msg=name)

        recon = model.decode(paddle.to_tensor(ref["codes"]))
        assert list(recon.shape) == list(ref["recon"].shape), name
        assert max_diff(recon.numpy(), ref["recon"]) <= 1e-4, name

        out = processor.postprocess(recon)["pixel_values"]
        assert len(out) == 1 and isinstance(out[0], Image.Image)
        assert max_diff(np.asarray(out[0]), ref["recon_uint8"]) <= 1, name


def test_video_matches_reference(fixtures_dir, model, processor):
    ref = np.load(os.path.join(str(fixtures_dir), "refs", "vq_video.npz"))
    frames = [Image.open(p) for p in video_frames(fixtures_dir)]
    pixel_values = processor(frames, return_tensors="pd")["pixel_values"]
    assert max_diff(pixel_values.numpy(), ref["pixel_values"]) <= 1e-6
    factor = model.config.temporal_downsample_factor
    clips = pixel_values.reshape([-1, factor] + list(pixel_values.shape[1:]))
    cases = {"clips": clips, "video": pixel_values.unsqueeze(0)}
    for prefix, x in cases.items():
        assert max_diff(x.numpy(), ref[f"{prefix}_input"]) <= 1e-6, prefix
        latent = model.encode_to_latent(x)
        assert max_diff(latent.numpy(), ref[f"{prefix}_prequant_latent"]) <= 1e-4, prefix
        codes = model.encode(x)
        np.testing.assert_array_equal(codes.numpy(), ref[f"{prefix}_codes"], err_msg=prefix)
        recon = model.decode(paddle.to_tensor(ref[f"{prefix}_codes"]))
        assert list(recon.shape) == list(ref[f"{prefix}_recon"].shape), prefix
        assert max_diff(recon.numpy(), ref[f"{prefix}_recon"]) <= 1e-4, prefix
        uint8 = processor.postprocess(recon, return_tensors="np")["pixel_values"]
        assert max_diff(uint8, ref[f"{prefix}_recon_uint8"]) <= 1, prefix


def test_one_frame_equals_repeated_frames(fixtures_dir, model):
    """The image shortcut (one frame) equals the original's computation on factor repeated frames."""
    _, _, ref = image_cases(fixtures_dir)[0]
    x = paddle.to_tensor(ref["pixel_values"])
    factor = model.config.temporal_downsample_factor
    repeated = x.unsqueeze(1).tile([1, factor, 1, 1, 1])
    assert max_diff(model.encode_to_latent(x).numpy(), model.encode_to_latent(repeated).numpy()) <= 1e-5
    np.testing.assert_array_equal(model.encode(x).numpy(), model.encode(repeated).numpy()[:, 0])
    codes = paddle.to_tensor(ref["codes"])
    video = model.decode(codes.unsqueeze(1))
    assert video.shape[1] == factor
    assert max_diff(model.decode(codes).numpy(), video[:, 0].numpy()) <= 1e-5


def test_batch_equals_single(fixtures_dir, model):
    cases = image_cases(fixtures_dir)
    _, _, ref = cases[0]
    x = paddle.to_tensor(np.concatenate([ref["pixel_values"], -ref["pixel_values"]]))
    codes = model.encode(x)
    np.testing.assert_array_equal(codes.numpy()[:1], ref["codes"])
    np.testing.assert_array_equal(codes.numpy()[1:], model.encode(x[1:]).numpy())
    recon = model.decode(codes)
    assert max_diff(recon.numpy()[:1], ref["recon"]) <= 1e-4


def test_numpy_inputs_accepted(fixtures_dir, model):
    _, _, ref = image_cases(fixtures_dir)[0]
    np.testing.assert_array_equal(model.encode(ref["pixel_values"]).numpy(), ref["codes"])
    assert max_diff(model.decode(ref["codes"]).numpy(), ref["recon"]) <= 1e-4
    assert max_diff(model(paddle.to_tensor(ref["pixel_values"])).numpy(), ref["recon"]) <= 1e-4


def test_bad_inputs(model):
    cfg = model.config
    f, k, t = cfg.spatial_factor, cfg.codebook_size, cfg.temporal_downsample_factor
    good = paddle.zeros([1, cfg.in_channels, 2 * f, 2 * f])
    model.encode(good)
    cases = [
        (paddle.zeros([cfg.in_channels, 2 * f, 2 * f]), "got shape"),
        (paddle.zeros([1, cfg.in_channels + 1, 2 * f, 2 * f]), "channels"),
        (paddle.zeros([1, cfg.in_channels, 2 * f + 1, 2 * f]), "multiples of the spatial factor"),
        (paddle.zeros([1, cfg.in_channels, 2 * f, f // 2]), "multiples of the spatial factor"),
        (paddle.zeros([1, t + 1, cfg.in_channels, 2 * f, 2 * f]), "temporal_downsample_factor"),
        (paddle.zeros([1, cfg.in_channels, 2 * f, 2 * f], dtype="int64"), "floating point"),
    ]
    for x, message in cases:
        with pytest.raises(ValueError, match=message):
            model.encode(x)
    with pytest.raises(TypeError):
        model.encode([[1.0]])
    code_cases = [
        (paddle.full([1, 2, 2], k, dtype="int64"), r"\[0, %d\)" % k),
        (paddle.full([1, 2, 2], -1, dtype="int64"), "codebook_size"),
        (paddle.zeros([2, 2], dtype="int64"), "got shape"),
        (paddle.zeros([1, 1, 1, 2, 2], dtype="int64"), "got shape"),
        (paddle.zeros([1, 2, 2], dtype="float32"), "integers"),
    ]
    for codes, message in code_cases:
        with pytest.raises(ValueError, match=message):
            model.decode(codes)


def test_save_load_round_trip(tmp_path, fixtures_dir, model):
    model.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    again = Emu3VisionVQModel.from_pretrained(str(tmp_path))
    assert again.config == model.config
    ours, theirs = model.state_dict(), again.state_dict()
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        np.testing.assert_array_equal(ours[name].numpy(), theirs[name].numpy(), err_msg=name)
    _, _, ref = image_cases(fixtures_dir)[0]
    np.testing.assert_array_equal(again.encode(ref["pixel_values"]).numpy(), ref["codes"])


def _run_cli(args):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = os.path.join(REPO_ROOT, "paddlemix", "examples", "emu3", "autoencode.py")
    proc = subprocess.run([sys.executable, script] + args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_autoencode_cli(tmp_path, fixtures_dir, vq_dir):
    frames = video_frames(fixtures_dir)
    factor = Emu3VisionVQConfig.from_pretrained(vq_dir).temporal_downsample_factor
    n_partial = len(frames) - 1 if (len(frames) - 1) % factor else len(frames) - 2
    ref_video = np.load(os.path.join(str(fixtures_dir), "refs", "vq_video.npz"))
    full, partial, out = tmp_path / "frames", tmp_path / "few_frames", tmp_path / "out"
    full.mkdir()
    partial.mkdir()
    for i, path in enumerate(frames):
        data = open(path, "rb").read()
        (full / os.path.basename(path)).write_bytes(data)
        if i < n_partial:
            (partial / os.path.basename(path)).write_bytes(data)
    inputs = os.path.join(str(fixtures_dir), "inputs")
    stdout = _run_cli(
        ["--model_path", vq_dir, "--image_path", inputs, "--video_path", str(full), "--output_dir", str(out)]
    )
    assert stdout.count("PSNR") == len(glob.glob(os.path.join(inputs, "*.png"))) + 1, stdout
    for name, _, ref in image_cases(fixtures_dir):
        h, w = ref["codes"].shape[1:]
        assert re.search(rf"{name}\.png: codes \[{h}, {w}\], PSNR [\d.]+ dB", stdout), name
        written = np.asarray(Image.open(out / f"{name}_recon.png"))
        assert max_diff(written, ref["recon_uint8"]) <= 1, name
    video_out = out / "frames_recon"
    stems = [os.path.splitext(os.path.basename(p))[0] for p in frames]
    written = [np.asarray(Image.open(video_out / f"{stem}_recon.png")) for stem in stems]
    assert max_diff(np.stack(written), ref_video["clips_recon_uint8"]) <= 1

    stdout = _run_cli(["--model_path", vq_dir, "--video_path", str(partial), "--output_dir", str(out)])
    assert "is not a multiple of" in stdout and "PSNR" in stdout, stdout
    assert len(os.listdir(out / "few_frames_recon")) == n_partial


def test_frames_per_pass_only_bounds_memory(fixtures_dir, model):
    ref = np.load(os.path.join(str(fixtures_dir), "refs", "vq_video.npz"))
    x = paddle.to_tensor(ref["video_input"])
    codes = paddle.to_tensor(ref["video_codes"])
    default = model.frames_per_pass
    try:
        results = {}
        for n in (1, None):
            model.frames_per_pass = n
            results[n] = (model.encode_to_latent(x).numpy(), model.decode(codes).numpy())
    finally:
        model.frames_per_pass = default
    assert max_diff(results[1][0], results[None][0]) <= 1e-5
    assert max_diff(results[1][1], results[None][1]) <= 1e-5


def test_temporal_norm_other_dtypes_use_float32_statistics(model):
    from paddlemix.models.emu3.modeling_emu3visionvq import _temporal_norm

    norm = model.encoder.time_res_stack[0].norm1
    x = paddle.randn([2, norm.weight.shape[0], 3, 4, 5])
    expected = norm(x).numpy()
    got = _temporal_norm(norm, x.astype("float64"))
    assert got.dtype == paddle.float64
    assert max_diff(got.numpy(), expected) <= 1e-6
    mean, var = norm._mean.numpy(), norm._variance.numpy()
    w, b = norm.weight.numpy(), norm.bias.numpy()
    shape = [1, -1, 1, 1, 1]
    ref = (x.numpy() - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5) * w.reshape(shape) + b.reshape(shape)
    assert max_diff(expected, ref) <= 1e-5
