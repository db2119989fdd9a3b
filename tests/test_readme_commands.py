"""The commands users copy: this README's headline command, and PaddleMIX's own Emu3 README commands, run as written.

The headline command is read from README.md itself (so the test follows the README) and its PNG is compared with the
original's reference image. PaddleMIX's commands (paddlemix/examples/emu3/README.md of PaddlePaddle/PaddleMIX,
sections 3a-3c) are copied below verbatim; only the paths are swapped for fixture folders, and PaddleMIX's
``--height=720 --width=720`` (an image area of 518400 pixels: a 90x90 grid, beyond the fixture LM's 1024 positions) is
scaled to ``--height=32 --width=32``, the fixture's own image_area of 1024 pixels.
"""

import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT


PADDLEMIX_AUTOENCODE = """python paddlemix/examples/emu3/autoencode.py \\
    --model_path="BAAI/Emu3-VisionTokenizer" \\
    --image_path="paddlemix/demo_images/emu3_demo.png"
"""
PADDLEMIX_GENERATION = """python paddlemix/examples/emu3/run_generation_inference.py \\
    --model_path="BAAI/Emu3-Gen" \\
    --vq_model_path="BAAI/Emu3-VisionTokenizer" \\
    --prompt="a portrait of young girl." \\
    --ratio="1:1" \\
    --height=720 \\
    --width=720 \\
    --dtype="bfloat16"
"""
PADDLEMIX_UNDERSTANDING = """python paddlemix/examples/emu3/run_understanding_inference.py \\
    --model_path="BAAI/Emu3-Chat" \\
    --vq_model_path="BAAI/Emu3-VisionTokenizer" \\
    --image_path="paddlemix/demo_images/emu3_demo.png" \\
    --question="Please describe the image breifly" \\
    --max_new_tokens=512 \\
    --dtype="bfloat16"
"""


def run(argv, cwd, timeout=300):
    """argv (starting with "python" and a repo-relative script) in a subprocess importing this checkout."""
    assert argv[0] == "python" and argv[1].startswith("paddlemix/examples/emu3/"), argv[:2]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONIOENCODING="utf-8")
    env.pop("PADDLEMIX_LOG_LEVEL", None)
    command = [sys.executable, str(REPO_ROOT / argv[1])] + argv[2:]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8",
                          timeout=timeout)


def split(command):
    """A shell command (lines joined by backslash-newline) as argv."""
    return shlex.split(command.replace("\\\n", " "))


def swap(argv, replacements):
    """argv with the value of each ``--flag=value`` / ``--flag value`` named in replacements swapped; every flag
    named must occur (so the copied command cannot silently drift from what is tested)."""
    out, seen, i = [], set(), 0
    while i < len(argv):
        arg = argv[i]
        flag = arg.split("=", 1)[0]
        if flag in replacements and "=" in arg:
            out.append(f"{flag}={replacements[flag]}")
            seen.add(flag)
        elif flag in replacements:
            out += [flag, str(replacements[flag])]
            seen.add(flag)
            i += 1
        else:
            out.append(arg)
        i += 1
    assert seen == set(replacements), set(replacements) - seen
    return out


def headline_command():
    """The text-to-image command of README.md's first bash block (the part after the installs)."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    parts = [p.strip() for p in block.split("&&")]
    commands = [p for p in parts if p.startswith("python paddlemix/examples/emu3/run_generation_inference.py")]
    assert len(commands) == 1, parts
    return split(commands[0])


def uint8_close(png, reference_png):
    got = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    want = np.asarray(Image.open(reference_png).convert("RGB"), dtype=np.int16)
    return got.shape == want.shape and int(np.abs(got - want).max()) <= 1


def test_readme_headline_command(fixtures_dir, tmp_path):
    argv = headline_command()
    assert "--greedy" in argv and "--demo" in argv
    demo = argv[argv.index("--demo") + 1]
    if not (REPO_ROOT / demo).resolve() == fixtures_dir.resolve():  # fixtures elsewhere ($EMU3_FIXTURES)
        demo = str(fixtures_dir)
    argv = swap(argv, {"--demo": demo, "--output_dir": tmp_path / "outputs"})
    result = run(argv, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning" not in result.stderr.lower(), result.stderr[-3000:]
    png = tmp_path / "outputs" / "emu3_t2i_00.png"
    assert f"wrote {png}" in result.stdout.splitlines()[-1], result.stdout
    assert sorted(os.listdir(tmp_path / "outputs")) == ["emu3_t2i_00.png"]
    assert uint8_close(png, fixtures_dir / "refs" / "gen_t2i_single_0.png")


def model_folder(fixtures_dir, tmp_path, name):
    """A BAAI-style LM folder (weights, config and tokenizer files together) made of links to the fixture's files."""
    folder = tmp_path / name
    folder.mkdir()
    for sub in ("llm", "tokenizer"):
        for f in (fixtures_dir / sub).iterdir():
            if not (folder / f.name).exists():
                (folder / f.name).symlink_to(f)
    return folder


def test_paddlemix_autoencode_command(fixtures_dir, tmp_path):
    """The image is the fixture's img_a, so the reconstruction can be compared with the original's."""
    argv = swap(split(PADDLEMIX_AUTOENCODE), {
        "--model_path": fixtures_dir / "vision_tokenizer", "--image_path": fixtures_dir / "inputs" / "img_a.png"})
    result = run(argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "autoencode_output" / "img_a_recon.png"
    assert re.search(r"img_a\.png: codes \[8, 8\], PSNR [\d.]+ dB -> ", result.stdout), result.stdout
    assert uint8_close(out, fixtures_dir / "refs" / "vq_img_a_recon.png")


def test_paddlemix_generation_command(fixtures_dir, tmp_path):
    argv = swap(split(PADDLEMIX_GENERATION), {
        "--model_path": model_folder(fixtures_dir, tmp_path, "Emu3-Gen"),
        "--vq_model_path": fixtures_dir / "vision_tokenizer", "--height": 32, "--width": 32})
    result = run(argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    image = Image.open(tmp_path / "outputs" / "emu3_t2i_00.png")
    assert image.size == (32, 32)  # area height*width, aspect --ratio, grid 4x4 of 8-pixel tokens


@pytest.mark.parametrize("height,width,ratio,size", [(32, 64, None, (64, 32)), (32, 64, "1:1", (48, 48))])
def test_height_width_mean_the_area(fixtures_dir, tmp_path, height, width, ratio, size):
    """--height/--width alone: the aspect is width:height; with --ratio: area height*width at that ratio, as
    PaddleMIX (2048 pixels at 1:1: sqrt(2048)/8 = 5.66 -> a 6x6 grid)."""
    argv = ["python", "paddlemix/examples/emu3/run_generation_inference.py", "--demo", str(fixtures_dir),
            "--prompt", "a cat", "--height", str(height), "--width", str(width), "--greedy",
            "--output_dir", str(tmp_path)] + (["--ratio", ratio] if ratio else [])
    result = run(argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(tmp_path / "emu3_t2i_00.png").size == size


def test_paddlemix_understanding_command(fixtures_dir, tmp_path):
    argv = swap(split(PADDLEMIX_UNDERSTANDING), {
        "--model_path": model_folder(fixtures_dir, tmp_path, "Emu3-Chat"),
        "--vq_model_path": fixtures_dir / "vision_tokenizer", "--image_path": fixtures_dir / "inputs" / "img_a.png"})
    result = run(argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"Question 0 ({fixtures_dir / 'inputs' / 'img_a.png'}): Please describe the image breifly"
    assert any(line.startswith("Answer 0: ") for line in lines), result.stdout


def test_auto_dtype_suits_the_device(monkeypatch, caplog):
    """--dtype auto (the scripts' default): bfloat16 on a GPU, float32 on CPU, with no warning either way."""
    from paddlemix.models import model_utils

    for gpu, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(model_utils, "on_gpu", lambda: gpu)
        with caplog.at_level("WARNING"):
            assert model_utils.resolve_dtype("auto") == expected
        assert not caplog.records
    monkeypatch.setattr(model_utils, "on_gpu", lambda: False)
    with caplog.at_level("WARNING"):
        assert model_utils.resolve_dtype("bfloat16") == "float32"  # an explicit bf16 on CPU is upcast and says so
    assert "float32" in caplog.text
