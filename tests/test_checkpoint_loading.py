"""Loading vision tokenizer checkpoints: bf16 files, shards, broken folders (transformers' -hf layout: see
test_hf_checkpoint.py)."""

import glob
import json
import os
import shutil

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file, save_file

from paddlemix.models.emu3 import Emu3VisionVQConfig, Emu3VisionVQModel
from paddlemix.models.safetensors_io import CheckpointError


@pytest.fixture(scope="module")
def vq_dir(fixtures_dir):
    return os.path.join(str(fixtures_dir), "vision_tokenizer")


@pytest.fixture(scope="module")
def original_state(vq_dir):
    """The checkpoint as the original wrote it, read with the official safetensors package."""
    return load_file(os.path.join(vq_dir, "model.safetensors"))


@pytest.fixture(scope="module")
def model(vq_dir):
    return Emu3VisionVQModel.from_pretrained(vq_dir)


@pytest.fixture(scope="module")
def image_ref(fixtures_dir):
    path = sorted(glob.glob(os.path.join(str(fixtures_dir), "refs", "vq_img_*.npz")))[0]
    return dict(np.load(path))


def _copy_config(vq_dir, dst):
    os.makedirs(dst, exist_ok=True)
    shutil.copy(os.path.join(vq_dir, "config.json"), dst)


def _assert_same_outputs(model, other, ref):
    np.testing.assert_array_equal(other.encode(ref["pixel_values"]).numpy(), ref["codes"])
    a = model.decode(ref["codes"]).numpy()
    b = other.decode(ref["codes"]).numpy()
    np.testing.assert_array_equal(a, b)


def _param(model, key):
    """The model's value for an original checkpoint key, in the checkpoint's layout."""
    name = key.replace("running_mean", "_mean").replace("running_var", "_variance")
    return model.state_dict()[name].numpy()


def test_original_keys_are_parameter_names(model, original_state):
    expected = {k for k in original_state if not k.endswith("num_batches_tracked")}
    ours = {k.replace("._mean", ".running_mean").replace("._variance", ".running_var") for k in model.state_dict()}
    assert ours == expected
    for key in ("quantize.embedding.weight", "encoder.conv_in.weight"):
        np.testing.assert_array_equal(_param(model, key), original_state[key])


def _bf16_round(x):
    """float32 -> nearest bfloat16 (ties to even), returned as (raw uint16 bits, float32 value)."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return rounded, (rounded.astype(np.uint32) << 16).view(np.float32)


def _write_bf16(path, state):
    """A safetensors file with every float tensor stored as BF16 (written by hand: numpy has no bfloat16)."""
    header, blobs, offset = {}, [], 0
    for key, arr in state.items():
        if arr.dtype == np.float32:
            data, dtype = _bf16_round(arr)[0], "BF16"
        else:
            data, dtype = arr, {np.dtype(np.int64): "I64"}[arr.dtype]
        raw = np.ascontiguousarray(data).tobytes()
        header[key] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def test_bf16_checkpoint_loads_as_float32(tmp_path, vq_dir, original_state):
    _copy_config(vq_dir, tmp_path)
    _write_bf16(os.path.join(tmp_path, "model.safetensors"), original_state)
    loaded = Emu3VisionVQModel.from_pretrained(str(tmp_path), dtype="float32")
    changed = 0
    for key, arr in original_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        got = _param(loaded, key)
        assert got.dtype == np.float32
        expected = _bf16_round(arr)[1]
        np.testing.assert_array_equal(got, expected, err_msg=key)
        changed += int(not np.array_equal(expected, arr))
    assert changed > 0


def test_bf16_request_on_cpu_upcasts(vq_dir, original_state):
    if paddle.is_compiled_with_cuda():
        pytest.skip("this checks the CPU fallback")
    loaded = Emu3VisionVQModel.from_pretrained(vq_dir, dtype="bfloat16")
    assert loaded.dtype == paddle.float32
    key = "quantize.embedding.weight"
    np.testing.assert_array_equal(_param(loaded, key), original_state[key])


def test_sharded_checkpoint(tmp_path, model, image_ref):
    total = sum(int(np.prod(p.shape)) * 4 for p in model.state_dict().values())
    model.save_pretrained(str(tmp_path), max_shard_size=total // 3)
    shards = sorted(glob.glob(os.path.join(tmp_path, "model-*.safetensors")))
    assert len(shards) >= 3 and os.path.isfile(os.path.join(tmp_path, "model.safetensors.index.json"))
    assert not os.path.exists(os.path.join(tmp_path, "model.safetensors"))
    loaded = Emu3VisionVQModel.from_pretrained(str(tmp_path))
    _assert_same_outputs(model, loaded, image_ref)


# ----------------------------------------------------------------------------- broken checkpoints
def test_truncated_safetensors(tmp_path, vq_dir):
    _copy_config(vq_dir, tmp_path)
    data = open(os.path.join(vq_dir, "model.safetensors"), "rb").read()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Emu3VisionVQModel.from_pretrained(str(tmp_path))


def test_corrupt_safetensors_header(tmp_path, vq_dir):
    _copy_config(vq_dir, tmp_path)
    data = bytearray(open(os.path.join(vq_dir, "model.safetensors"), "rb").read())
    data[8:40] = b"#" * 32
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        Emu3VisionVQModel.from_pretrained(str(tmp_path))


def test_missing_config(tmp_path, vq_dir):
    shutil.copy(os.path.join(vq_dir, "model.safetensors"), tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        Emu3VisionVQModel.from_pretrained(str(tmp_path))


def test_missing_weights(tmp_path, vq_dir):
    _copy_config(vq_dir, tmp_path)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Emu3VisionVQModel.from_pretrained(str(tmp_path))


def test_unknown_config_field(tmp_path, vq_dir):
    shutil.copy(os.path.join(vq_dir, "model.safetensors"), tmp_path)
    with open(os.path.join(vq_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg["codebook_sizes"] = 7
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="codebook_sizes"):
        Emu3VisionVQModel.from_pretrained(str(tmp_path))


def test_missing_unexpected_misshaped_keys_are_listed(tmp_path, vq_dir, original_state):
    _copy_config(vq_dir, tmp_path)
    state = dict(original_state)
    del state["encoder.conv_in.bias"]
    state["encoder.extra_layer.weight"] = np.zeros(3, np.float32)
    state["quantize.embedding.weight"] = np.zeros((3, 3), np.float32)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        Emu3VisionVQModel.from_pretrained(str(tmp_path))
    message = str(info.value)
    for needle in ("missing", "encoder.conv_in.bias", "unexpected", "encoder.extra_layer.weight", "wrongly shaped",
                   "quantize.embedding.weight", "model.safetensors"):
        assert needle in message, (needle, message)


# ----------------------------------------------------------------------------- config
def test_config_defaults_are_the_released_tokenizer():
    c = Emu3VisionVQConfig()
    assert (c.codebook_size, c.embed_dim, c.z_channels, c.double_z, c.in_channels, c.out_channels) == (
        32768, 4, 4, False, 3, 3)
    assert (c.temporal_downsample_factor, c.ch, c.ch_mult, c.num_res_blocks, c.attn_resolutions, c.dropout) == (
        4, 256, [1, 2, 2, 4], 2, [3], 0.0)
    assert c.spatial_factor == 8


def test_config_validation_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="embed_dim"):
        Emu3VisionVQConfig(embed_dim=6, z_channels=4)
    with pytest.raises(ValueError, match="multiple of 32"):
        Emu3VisionVQConfig(ch=48)
    with pytest.raises(ValueError, match="attn_resolutions"):
        Emu3VisionVQConfig(attn_resolutions=[7])
    with pytest.raises(ValueError, match="power of two"):
        Emu3VisionVQConfig(temporal_downsample_factor=3)
    with pytest.raises(TypeError, match="unknown"):
        Emu3VisionVQConfig(hidden=3)
    c = Emu3VisionVQConfig(codebook_size=96, ch=64, ch_mult=[1, 1, 2], attn_resolutions=[1, 2])
    c.save_pretrained(str(tmp_path))
    assert Emu3VisionVQConfig.from_pretrained(str(tmp_path)) == c
