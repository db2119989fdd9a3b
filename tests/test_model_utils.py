"""The shared loader: chunked conversion/transposition gives exactly the checkpoint's values, pages are released."""

import numpy as np
import paddle
import pytest
from paddle import nn

from paddlemix.models import model_utils
from paddlemix.models.configuration_utils import PretrainedConfig
from paddlemix.models.model_utils import PretrainedModel
from paddlemix.models.safetensors_io import SafetensorsFile, bf16_to_f32, f32_to_bf16, save_file


class ToyConfig(PretrainedConfig):
    model_type = "toy"

    def __init__(self, n_in=37, n_out=53, **kwargs):
        self.n_in = n_in
        self.n_out = n_out
        super().__init__(**kwargs)


class Toy(PretrainedModel):
    config_class = ToyConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = nn.Linear(config.n_in, config.n_out)
        self.conv = nn.Conv2D(config.n_in, config.n_out, 1)
        self.scale = self.create_parameter([config.n_out, 3])


def _write(folder, bf16):
    rng = np.random.default_rng(0)
    tensors = {
        "proj.weight": rng.standard_normal((53, 37)).astype(np.float32),  # PyTorch Linear layout [out, in]
        "proj.bias": rng.standard_normal(53).astype(np.float32),
        "conv.weight": rng.standard_normal((53, 37)).astype(np.float32),  # a Linear saved for a 1x1 conv
        "conv.bias": rng.standard_normal(53).astype(np.float32),
        "scale": rng.standard_normal((53, 3)).astype(np.float32),
    }
    if bf16:
        tensors = {k: f32_to_bf16(v) for k, v in tensors.items()}
    save_file(tensors, str(folder / "model.safetensors"), bf16_names=set(tensors) if bf16 else ())
    ToyConfig().save_pretrained(str(folder))
    return {k: bf16_to_f32(v) if bf16 else v for k, v in tensors.items()}


@pytest.mark.parametrize("bf16", [False, True])
def test_chunked_load_equals_the_checkpoint(tmp_path, monkeypatch, bf16):
    expected = _write(tmp_path, bf16)
    # blocks of 2 rows: every tensor is converted and transposed in many pieces
    monkeypatch.setattr(model_utils, "_CHUNK_BYTES", 2 * 37 * 4)
    released = []
    original = SafetensorsFile.release
    monkeypatch.setattr(SafetensorsFile, "release", lambda self, *a: (released.append(a), original(self, *a)))
    model = Toy.from_pretrained(str(tmp_path))
    np.testing.assert_array_equal(model.proj.weight.numpy(), expected["proj.weight"].T)
    np.testing.assert_array_equal(model.proj.bias.numpy(), expected["proj.bias"])
    np.testing.assert_array_equal(model.conv.weight.numpy(), expected["conv.weight"].reshape(53, 37, 1, 1))
    np.testing.assert_array_equal(model.scale.numpy(), expected["scale"])
    # the rows of proj.weight were released block by block, covering the whole tensor
    row_bytes = 37 * (2 if bf16 else 4)
    rows_per_block = (2 * 37 * 4) // row_bytes
    proj_blocks = [a[1:] for a in released if a[0] == "proj.weight"]
    starts = list(range(0, 53, rows_per_block))
    assert proj_blocks == [(r * row_bytes, (r + rows_per_block) * row_bytes) for r in starts]


def test_save_load_round_trip_keeps_the_pytorch_layout(tmp_path):
    paddle.seed(1)
    model = Toy(ToyConfig())
    model.save_pretrained(str(tmp_path))
    with SafetensorsFile(str(tmp_path / "model.safetensors")) as st:
        assert st.shape("proj.weight") == [53, 37]
        np.testing.assert_array_equal(st.get("proj.weight"), model.proj.weight.numpy().T)
    loaded = Toy.from_pretrained(str(tmp_path))
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name].numpy(), value.numpy())
