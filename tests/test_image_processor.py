"""Emu3VisionVQImageProcessor: smart_resize, mode conversions, config files, postprocess, bad inputs."""

import json
import os

import numpy as np
import paddle
import pytest
from PIL import Image

from paddlemix.models.emu3 import Emu3VisionVQImageProcessor, smart_resize


@pytest.fixture
def processor():
    # wide pixel range: a 32x40 image is kept at its size, so only the conversion and normalization act
    return Emu3VisionVQImageProcessor(min_pixels=256, max_pixels=100_000, spatial_factor=8)


def normalized(rgb):
    """Numpy reference of rescale (1/255) + normalize (mean 0.5, std 0.5), channels first."""
    return ((rgb.astype(np.float64) / 255.0).astype(np.float32) - 0.5).transpose(2, 0, 1) / 0.5


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- smart_resize
def test_smart_resize_unchanged_and_bankers_rounding():
    assert smart_resize(64, 64, 8, 1024, 6400) == (64, 64)
    # 52/8 = 6.5 -> 6 and 84/8 = 10.5 -> 10 (half to even); half-up would give (56, 88)
    assert smart_resize(52, 84, 8, 1024, 6400) == (48, 80)
    # 60/8 = 7.5 -> 8 (even), 44/8 = 5.5 -> 6
    assert smart_resize(60, 44, 8, 1024, 6400) == (64, 48)


def test_smart_resize_max_pixels_floors():
    # round gives 120x96 = 11520 > 6400; beta = sqrt(12000 / 6400): 120/beta/8 = 10.95 -> 10, 100/beta/8 = 9.13 -> 9
    assert smart_resize(120, 100, 8, 1024, 6400) == (80, 72)


def test_smart_resize_min_pixels_ceils():
    # round gives 16x32 = 512 < 1024; beta = sqrt(1024 / 720): 20*beta/8 = 2.98 -> 3, 36*beta/8 = 5.37 -> 6
    assert smart_resize(20, 36, 8, 1024, 6400) == (24, 48)


def test_smart_resize_errors():
    with pytest.raises(ValueError, match="at least 8"):
        smart_resize(7, 100, 8, 1, 10**9)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 51, 8, 1, 10**9)
    assert smart_resize(10, 50, 8, 1, 10**9) == (8, 48)  # ratio exactly 5 is allowed


# ----------------------------------------------------------------------------- mode conversions
def test_rgb_no_resize_equals_numpy_reference(processor, rgb):
    out = processor(Image.fromarray(rgb), return_tensors="np")["pixel_values"]
    assert out.shape == (1, 3, 32, 40) and out.dtype == np.float32
    assert np.abs(out[0] - normalized(rgb)).max() <= 1e-6


def _mode_cases(rgb):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    alpha = rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    cases = {
        "RGBA": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), rgb),  # alpha dropped, no compositing
        "L": (Image.fromarray(gray, "L"), np.repeat(gray[..., None], 3, axis=2)),
        "LA": (Image.fromarray(np.dstack([gray, alpha]), "LA"), np.repeat(gray[..., None], 3, axis=2)),
    }
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    p = Image.fromarray(gray, "P")
    p.putpalette(palette.flatten().tolist())
    cases["P"] = (p, palette[gray])
    cmyk = rng.integers(0, 256, rgb.shape[:2] + (4,), dtype=np.uint8)
    inv_k = 255 - cmyk[..., 3:].astype(np.int64)
    prod = cmyk[..., :3].astype(np.int64) * inv_k + 128
    cases["CMYK"] = (Image.fromarray(cmyk, "CMYK"), (inv_k - ((prod + (prod >> 8)) >> 8)).astype(np.uint8))
    sixteen = rng.integers(0, 1024, rgb.shape[:2], dtype=np.uint16)
    # PIL's conversion (what the original uses) saturates 16-bit values at 255
    cases["I;16"] = (Image.fromarray(sixteen), np.repeat(np.minimum(sixteen, 255).astype(np.uint8)[..., None], 3, 2))
    return cases


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P", "CMYK", "I;16"])
def test_mode_conversion_matches_numpy_reference(processor, rgb, mode):
    image, expected_rgb = _mode_cases(rgb)[mode]
    assert image.mode == mode
    out = processor(image, return_tensors="np")["pixel_values"][0]
    assert out.shape == (3,) + expected_rgb.shape[:2]
    assert np.abs(out - normalized(expected_rgb)).max() <= 1e-6


def test_resize_is_pil_bicubic():
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, (52, 84, 3), dtype=np.uint8)
    p = Emu3VisionVQImageProcessor(min_pixels=1024, max_pixels=6400)
    out = p(Image.fromarray(arr), return_tensors="np")["pixel_values"][0]
    expected = np.asarray(Image.fromarray(arr).resize((80, 48), Image.Resampling.BICUBIC))
    assert out.shape == (3, 48, 80)
    assert np.abs(out - normalized(expected)).max() <= 1e-6


def test_paths_arrays_and_tensors(tmp_path, processor, rgb):
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    from_pil = processor(Image.fromarray(rgb))["pixel_values"]
    np.testing.assert_array_equal(processor(str(path))["pixel_values"], from_pil)
    np.testing.assert_array_equal(processor(rgb)["pixel_values"], from_pil)
    pd = processor(rgb, return_tensors="pd").pixel_values
    assert isinstance(pd, paddle.Tensor)
    np.testing.assert_array_equal(pd.numpy(), from_pil)


def test_frames_batch(processor, rgb):
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb), Image.fromarray(rgb[::-1].copy())]
    out = processor(frames, return_tensors="np")["pixel_values"]
    assert out.shape == (3, 3, 32, 40)
    assert np.abs(out[1] - normalized(255 - rgb)).max() <= 1e-6
    with pytest.raises(ValueError, match="different sizes"):
        processor([Image.fromarray(rgb), Image.fromarray(rgb[:16])])


def test_bad_images(tmp_path, processor, rgb):
    with pytest.raises(ValueError, match="not an image"):
        processor(42)
    with pytest.raises(FileNotFoundError):
        processor(str(tmp_path / "missing.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="cannot read"):
        processor(str(broken))
    with pytest.raises(ValueError, match="uint8"):
        processor(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="at least 8"):
        processor(Image.fromarray(rgb[:5]))
    with pytest.raises(ValueError, match="aspect ratio"):
        processor(Image.fromarray(np.zeros((8, 48, 3), np.uint8)))
    with pytest.raises(ValueError, match="return_tensors"):
        processor(rgb, return_tensors="pt")


# ----------------------------------------------------------------------------- config files
def test_save_reload_and_bad_config_files(fixtures_dir, tmp_path):
    """(That from_pretrained reads the fixture's fields is shown by the parity of its pixel values with the
    original's in test_vision_tokenizer.)"""
    folder = os.path.join(str(fixtures_dir), "vision_tokenizer")
    with open(os.path.join(folder, "preprocessor_config.json")) as f:
        raw = json.load(f)
    p = Emu3VisionVQImageProcessor.from_pretrained(folder)
    p.save_pretrained(str(tmp_path))
    assert Emu3VisionVQImageProcessor.from_pretrained(str(tmp_path)) == p
    raw["brightness"] = 2
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="brightness"):
        Emu3VisionVQImageProcessor.from_pretrained(str(tmp_path))
    os.remove(tmp_path / "preprocessor_config.json")
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        Emu3VisionVQImageProcessor.from_pretrained(str(tmp_path))


# ----------------------------------------------------------------------------- postprocess
def test_postprocess_hand_values(processor):
    x = np.array([-1.0, 1.0, 0.0, 2.0, -2.0, 0.5], np.float32).reshape(1, 1, 1, 6).repeat(3, axis=1)
    out = processor.postprocess(x, return_tensors="np")["pixel_values"]
    assert out.dtype == np.uint8 and out.shape == (1, 1, 6, 3)
    # (x + 1) / 2 * 255, clipped, truncated: 127.5 -> 127, 191.25 -> 191
    np.testing.assert_array_equal(out[0, 0, :, 0], [0, 255, 127, 255, 0, 191])


def test_postprocess_numpy_reference_and_shapes(processor):
    x = np.random.default_rng(3).normal(0, 0.8, (2, 2, 3, 8, 16)).astype(np.float32)
    expected = np.floor(np.clip((x.astype(np.float64) * 0.5 + 0.5) * 255, 0, 255)).reshape(4, 3, 8, 16)
    out = processor.postprocess(paddle.to_tensor(x), return_tensors="np")["pixel_values"]
    assert out.shape == (4, 8, 16, 3)
    diff = np.abs(out.astype(np.int64) - expected.transpose(0, 2, 3, 1))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    images = processor.postprocess(x[0, 0]).pixel_values
    assert len(images) == 1 and images[0].mode == "RGB" and images[0].size == (16, 8)
    np.testing.assert_array_equal(np.asarray(images[0]), out[0])
    with pytest.raises(ValueError, match="pixel_values must be"):
        processor.postprocess(np.zeros((2, 4, 8, 8), np.float32))
